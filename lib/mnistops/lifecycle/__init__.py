"""The model lifecycle after training: the registry, the promotion gate and rollback
(:mod:`~mnistops.lifecycle.registry`), and verified reproduction (:mod:`~mnistops.lifecycle.reproduce`)."""
