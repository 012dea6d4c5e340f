"""The evaluation stage: metrics from labels and probabilities (:mod:`~mnistops.evaluate.metrics`),
deeper looks for the evaluation notebook (:mod:`~mnistops.evaluate.analysis`) and figures
(:mod:`~mnistops.evaluate.plots`)."""
