"""Warm kernels: each notebook of a batch gets a fresh kernel, started while the notebook before it
runs, which imports the libraries its notebook will use before its turn comes.

Why: a kernel takes about a second to start and a notebook's first cell two to three more to
import numpy, pandas, matplotlib, scikit-learn and MLflow; a batch of four notebooks spent about a
third of its time so (``benchmarks/bench_notebooks.py``, docs/benchmarks.md). Started ahead, that
time overlaps the notebook before. Only ``sys.modules`` is touched (:func:`warm` runs in a silent
execution): the notebook's namespace starts empty, so a notebook that forgets an import still fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mnistops.runner.notebooks import Notebook, parse_python

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"
# What a kernel imports while it waits for its turn, besides the notebook's own imports: the
# libraries mnistops imports inside its functions. Only sys.modules is touched (``__import__`` in
# a silent execution): the notebook's namespace starts empty, and a notebook that forgets an
# import still fails. MLflow (2 s) only for notebooks that use the tracking store.
WARM_ALWAYS = (
    "numpy",
    "pandas",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "IPython.display",
    "sklearn.model_selection",
    "sklearn.decomposition",
)
WARM_TRACKING = ("mlflow", "mlflow.pyfunc", "sklearn.ensemble", "sklearn.metrics", "sklearn.model_selection")
TRACKING_MODULES = ("mnistops.pipeline", "mnistops.tracking", "mnistops.lifecycle", "mnistops.evaluate.analysis")


class Kernel:
    """One kernel process for one notebook, started ahead of its turn and never shared.

    The manager is jupyter_client's asynchronous one, which papermill's nbclient drives with an
    asynchronous client of its own: with a blocking client nbclient can neither time a cell out
    nor notice a dead kernel. The warm-up uses a blocking client of its own, on a thread.
    """

    def __init__(self, workdir: Path, index: int, cwd: Path, env: dict[str, str]) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        self.log_path = workdir / f"kernel-{index}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in shutdown)
        # IPC sockets in our temp folder: nothing listens on a TCP port, not even on loopback.
        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(workdir / f"kernel-{index}"))
        run_sync(self.km.start_kernel)(cwd=str(cwd), env=env, stdout=self._log, stderr=self._log)
        self._ready: Future[None] | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The kernel's process id."""
        return getattr(self.km.provisioner, "pid", None)

    def warm_up(self, pool: ThreadPoolExecutor, timeout: float, modules: Sequence[str] = ()) -> None:
        """Wait for the kernel and import ``modules`` in it, on a thread, while another notebook runs."""
        self._ready = pool.submit(self._connect_and_import, timeout, modules)

    def _connect_and_import(self, timeout: float, modules: Sequence[str] = ()) -> None:
        from jupyter_client.blocking import BlockingKernelClient

        # With the manager as parent, "is the kernel alive?" asks the process, not a heartbeat
        # that a kernel still starting up has not begun to send.
        kc = BlockingKernelClient(parent=self.km)
        kc.load_connection_info(self.km.get_connection_info())
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=timeout)
            # One call of warm() below, in the kernel: the code is here, not in a string.
            code = f"from mnistops.runner.kernels import warm as _warm; _warm({list(modules)!r}); del _warm"
            msg_id = kc.execute(code, silent=True, store_history=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.1))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
        finally:
            kc.stop_channels()

    def ready(self, timeout: float) -> None:
        """Wait until the kernel is up and warm (or connect and warm it now)."""
        if self._ready is None:
            self._connect_and_import(timeout)
        else:
            self._ready.result(timeout=timeout)

    def interrupt(self) -> None:
        """SIGINT to the kernel: the running cell raises KeyboardInterrupt (safe in a signal handler)."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL to the kernel's process group."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)

    def shutdown(self) -> None:
        """Stop the kernel and release its sockets and files (main thread only)."""
        from jupyter_core.utils import run_sync

        if self._closed:
            return
        self._closed = True
        if self._ready is not None:
            with contextlib.suppress(Exception):
                self._ready.result(timeout=30)  # let a warm-up thread finish with its client
        with contextlib.suppress(Exception):
            import psutil

            cpu = psutil.Process(self.pid).cpu_times() if self.pid else None
            if cpu is not None:
                log.info("kernel %s used %.1f s of CPU", self.log_path.stem, cpu.user + cpu.system)
        try:
            # Idle by now (its notebook is over, or its cell was interrupted): nothing in it is
            # left to save, so it is stopped at once rather than asked and waited for.
            with contextlib.suppress(Exception):
                run_sync(self.km.shutdown_kernel)(now=True)
            if self.km.has_kernel:
                self.kill()
            with contextlib.suppress(Exception):
                run_sync(self.km.cleanup_resources)()
        finally:
            self._log.close()

    def log_tail(self, n: int = 2000) -> str:
        """The end of what the kernel process printed (for a kernel that died)."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def warm_modules(nb: Notebook) -> list[str]:
    """What ``nb``'s kernel imports ahead: the modules its code cells import, and the libraries
    those use (:data:`WARM_ALWAYS`, and :data:`WARM_TRACKING` when it uses the store)."""
    import ast

    found: list[str] = []
    cells = json.loads(nb.path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        lines = "".join(cell.get("source", [])).splitlines()
        found += [ln.split()[1] for ln in lines if ln.startswith("%load_ext ") and len(ln.split()) > 1]
        try:
            tree = parse_python("\n".join(ln for ln in lines if not ln.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        for node in tree.body if isinstance(tree, ast.Module) else []:
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from a import b``: b may be a module of its own (importing it is then tried).
                found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    tracking = any(m.startswith(TRACKING_MODULES) for m in found)
    return list(dict.fromkeys([*WARM_ALWAYS, *(WARM_TRACKING if tracking else ()), *found]))


def warm(modules: Sequence[str]) -> None:
    """Run inside a waiting kernel: import ``modules`` (one that fails does not stop the others:
    the notebook will show it), and open the tracking store once when MLflow is among them (MLflow
    builds its store object once per process)."""
    for module in modules:
        with contextlib.suppress(Exception):
            __import__(module)
    if "mlflow" in modules and os.environ.get("MLFLOW_TRACKING_URI"):
        from mnistops.tracking.store import check_store

        with contextlib.suppress(Exception):
            check_store(os.environ["MLFLOW_TRACKING_URI"])
