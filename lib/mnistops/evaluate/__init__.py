"""The evaluation stage, pure functions of a run's labels, probabilities and images: metrics
(:mod:`~mnistops.evaluate.metrics`), deeper looks for the evaluation notebook
(:mod:`~mnistops.evaluate.analysis`), figures (:mod:`~mnistops.evaluate.plots`), and the reference
profile a trained model is later monitored against (:mod:`~mnistops.evaluate.reference`, built on
:mod:`~mnistops.evaluate.features`)."""
