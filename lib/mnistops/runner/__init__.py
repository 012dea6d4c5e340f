"""The notebook runner behind ``run_notebooks.py``: parameterized notebooks executed with papermill,
each executed copy kept in ``outputs/`` and in MLflow as the record of the batch.

* :mod:`~mnistops.runner.notebooks`: find the notebooks, read their declared parameters.
* :mod:`~mnistops.runner.params`: a config and ``-p``/``-f`` values become injected parameters.
* :mod:`~mnistops.runner.batch`: run the batch (one MLflow run, failures, signals).
* :mod:`~mnistops.runner.kernels`: a fresh, warm kernel per notebook, and why.
* :mod:`~mnistops.runner.engine`: papermill's engine on those kernels.
* :mod:`~mnistops.runner.grid`: a grid of batches on Dask.
* :mod:`~mnistops.runner.html`: executed notebooks as HTML that opens offline.
* the command line of ``run_notebooks.py`` is :mod:`mnistops.cli.notebooks`.
"""
