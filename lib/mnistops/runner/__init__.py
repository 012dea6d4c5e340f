"""The notebook runner behind ``run_notebooks.py``: parameterized notebooks executed with papermill,
each executed copy kept in ``outputs/`` and in MLflow as the record of the batch.

* :mod:`~mnistops.runner.notebooks`: find the notebooks, read their declared parameters.
* :mod:`~mnistops.runner.params`: a config and ``-p``/``-f`` values become injected parameters.
* :mod:`~mnistops.runner.batch`: run the batch (one MLflow run, kernels, failures, signals).
* :mod:`~mnistops.runner.html`: executed notebooks as HTML that opens offline.
* :mod:`~mnistops.runner.cli`: the command line of ``run_notebooks.py``.
"""
