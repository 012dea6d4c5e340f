"""Serving the champion: an HTTP API, a page to draw digits on, Prometheus metrics, a prediction log.

* :mod:`~mnistops.serve.app`: the FastAPI app (a factory; the model loads in ``lifespan``).
* :mod:`~mnistops.serve.model`: loading a registered model and following ``@champion``.
* :mod:`~mnistops.serve.inputs`: request bodies and uploaded images made into MNIST-like input.
* :mod:`~mnistops.serve.batching`: concurrent requests answered by one model call.
* :mod:`~mnistops.tracking.predlog`: the prediction log (SQLite, written on a thread).
* :mod:`~mnistops.serve.metrics`: the Prometheus metrics.
* :mod:`~mnistops.serve.launch`: start and stop a server process (notebooks, tests, benchmarks).
"""
