"""Monitoring a served model: its inputs and answers compared with the reference its training run
logged (:mod:`mnistops.evaluate.reference`) by five checks (:mod:`~mnistops.monitor.checks`), the
HTML report (:mod:`~mnistops.monitor.report`), simulated shifts (:mod:`~mnistops.monitor.simulate`)
and the command's flow (:mod:`~mnistops.monitor.watch`)."""
