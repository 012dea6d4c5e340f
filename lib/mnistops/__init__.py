"""mnistops: one MNIST classifier, run the MLOps way.

Importing this package does no work: no MLflow, no network, no disk. The stages live in
their own modules (``sources``, ``validate``, ``fingerprint``, ``split``, ``models``,
``evaluate``, ``tracking``, ``registry``, ...) and :mod:`mnistops.pipeline` puts them in order.
"""

from __future__ import annotations

__version__ = "0.1.0"
