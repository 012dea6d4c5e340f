"""The server's routes, one router per concern: predictions (:mod:`~mnistops.serve.routes.predict`),
the page and what the server says of itself (:mod:`~mnistops.serve.routes.info`), and the admin
endpoint (:mod:`~mnistops.serve.routes.admin`). Thin: they read the request, call the library,
and answer; refusals are :class:`~mnistops.serve.inputs.BadInput` (a 4xx with a ``detail``)."""
