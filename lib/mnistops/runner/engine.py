"""papermill's nbclient engine, on mnistops' own kernels (:mod:`mnistops.runner.kernels`),
registered under the name ``mnistops`` with papermill's public ``papermill_engines.register``."""

from __future__ import annotations

from typing import Any

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine
from papermill.log import logger


class Engine(NBClientEngine):
    """nbclient's engine that closes the client nbclient makes for our kernel (it leaves the
    sockets of a client open when it does not own the kernel)."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Execute ``nb_man``'s notebook on the kernel manager passed as ``km``."""
        kwargs.pop("input_path", None)
        client = PapermillNotebookClient(
            nb_man,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            kernel_name=kernel_name,
            log=logger,
            log_output=log_output,
            stdout_file=stdout_file,
            stderr_file=stderr_file,
            **kwargs,
        )
        try:
            return client.execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
