"""The model lifecycle after training: the registry, the promotion gate and rollback
(:mod:`~mnistops.lifecycle.registry`), under one lock for the aliases
(:mod:`~mnistops.lifecycle.alias_lock`). Verified reproduction, which trains again, sits above the
pipeline (:mod:`mnistops.reproduce`)."""
