"""The training stage: models behind one interface (:mod:`~mnistops.train.models`), the
PyTorch CNN (:mod:`~mnistops.train.cnn`) and what MLflow stores with a model
(:mod:`~mnistops.train.pyfunc_model`). The order of the stages is in :mod:`mnistops.pipeline`."""
