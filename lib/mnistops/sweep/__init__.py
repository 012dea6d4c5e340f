"""Hyperparameter sweeps: Optuna's sampler, Dask's workers, one MLflow parent run per sweep."""
