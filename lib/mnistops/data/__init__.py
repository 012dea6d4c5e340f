"""The data stage: where datasets come from, how they are checked, fingerprinted and split.

* :mod:`~mnistops.data.sources`: load ``mnist``, ``fashion-mnist`` or a user's file, verified.
* :mod:`~mnistops.data.cache`: the local cache (atomic writes under a lock).
* :mod:`~mnistops.data.dataset`: the one in-memory :class:`~mnistops.data.dataset.Dataset` type.
* :mod:`~mnistops.data.validate`, :mod:`~mnistops.data.fingerprint`, :mod:`~mnistops.data.split`.
* :mod:`~mnistops.data.explore`: the tables and figures of the exploration notebook.

:func:`load_data` is a drop-in for ``keras.datasets.mnist.load_data()``: the same arrays,
verified and offline, without TensorFlow.
"""

from __future__ import annotations

import numpy as np


def load_data(
    name: str = "mnist", source: str = "auto"
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``(x_train, y_train), (x_test, y_test)`` as Keras's ``load_data()`` returns them.

    Images are ``uint8 (n, 28, 28)``, labels ``uint8 (n,)``, in the official 60,000 / 10,000
    split and the published order. Unlike Keras, nothing is downloaded when the dataset is
    cached, every byte is checked against pinned digests, and ``fashion-mnist`` or a path to
    your own ``.npz`` / IDX folder works the same way.

    Example::

        # from tensorflow import keras; keras.datasets.mnist.load_data()
        from mnistops.data import load_data
        (x_train, y_train), (x_test, y_test) = load_data()

    Raises:
        DataError: unknown name, missing path, bad bytes.
        SourceUnavailableError: not cached and no route could fetch it.
    """
    from mnistops.data import sources

    arrays = sources.load(name, source=source).official_arrays()
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
