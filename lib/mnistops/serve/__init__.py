"""Serving the champion: an HTTP API, a page to draw digits on, Prometheus metrics, a prediction log.

* :mod:`~mnistops.serve.app`: the FastAPI app (a factory; the model loads in its ``lifespan``).
* :mod:`~mnistops.serve.state`: what a running server holds, and the dependency routes ask it of.
* :mod:`~mnistops.serve.routes`: the routers (predictions, information, admin).
* :mod:`~mnistops.serve.holder`: the model that answers now, swapped when ``@champion`` moves.
* :mod:`~mnistops.serve.bodies`: request bodies, bounded as they are read.
* :mod:`~mnistops.serve.inputs`: request bodies and uploaded images made into MNIST-like input.
* :mod:`~mnistops.serve.batching`: concurrent requests answered by one model call.
* :mod:`~mnistops.serve.prom`: the Prometheus metrics.
* :mod:`~mnistops.serve.launch`: start and stop a server process (notebooks, tests, benchmarks).
* :mod:`~mnistops.serve.show`: figures of what a server answered (the serving notebook).

The prediction log the server writes is :mod:`mnistops.tracking.predlog` (monitoring reads it).
"""
