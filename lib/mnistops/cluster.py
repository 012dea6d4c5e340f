"""The Dask cluster that sweeps and notebook grids run on: a private LocalCluster, or the team's.

mnistops grows no scheduler of its own. Without an address it starts a ``LocalCluster`` of K
worker processes (one task at a time each) bound to 127.0.0.1, with its scratch space in a
temporary folder of this process, and closes it at the end. With ``--scheduler tcp://host:port``
it connects to a running Dask scheduler, after checking that the address is well formed and
answers, so that a typo costs one line and no run.

A local cluster is started with ``distributed.scheduler.allowed-failures`` at 0: a task whose
worker dies is failed at once (``KilledWorker``) rather than run a second time, so a trial or a
batch whose worker died is recorded once, as failed, and the nanny starts a new worker for the
tasks still to come. A shared scheduler keeps its own setting: a sweep ends a retried trial's
earlier run FAILED when the trial is told (see :func:`mnistops.sweep.run._tell`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from mnistops import processes
from mnistops.errors import MnistopsError

log = logging.getLogger(__name__)


class ClusterError(MnistopsError, RuntimeError):
    """The Dask scheduler could not be reached or used."""


@dataclass
class Cluster:
    """A connected Dask client and what it runs on."""

    client: Any
    address: str
    local: bool
    workers: int

    def workers_per_host(self) -> dict[str, int]:
        """How many worker processes each host runs (to share its cores among them)."""
        counts: dict[str, int] = {}
        for w in self.client.scheduler_info(n_workers=-1)["workers"].values():
            counts[w["host"]] = counts.get(w["host"], 0) + 1
        return counts


def check_address(address: str, timeout: float = 5.0) -> tuple[str, int]:
    """``tcp://host:port``, answering within ``timeout`` seconds, or a one-line error."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ClusterError(f"--scheduler {address!r} is not a Dask scheduler address: write tcp://HOST:PORT")
    from mnistops.tracking.store import unreachable

    reason = unreachable(parsed.hostname, port, timeout)
    if reason:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({reason}): start it "
            "(dask scheduler --host 127.0.0.1), or leave --scheduler out to run local workers"
        )
    return parsed.hostname, port


@contextlib.contextmanager
def connect(workers: int, scheduler: str | None = None, timeout: float = 10.0,
            preload: Sequence[str] = ()) -> Iterator[Cluster]:  # fmt: skip
    """A Dask client: on ``scheduler``, or on a LocalCluster of ``workers`` processes on 127.0.0.1.

    A local cluster's workers are forked from a fork server that has imported ``preload`` (and
    Dask) once: each worker starts with those modules loaded instead of importing them anew, which
    on two cores is seconds per worker (MLflow and scikit-learn, for a sweep's trials).

    Raises:
        ClusterError: ``workers`` below 1, or a scheduler that is malformed, silent or not Dask.
    """
    if workers < 1:
        raise ClusterError(f"--workers {workers}: give at least 1 worker")
    import dask
    from distributed import Client

    if scheduler:
        check_address(scheduler, timeout)
        try:
            client = Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ClusterError(f"--scheduler {scheduler} answered but is not a Dask scheduler: {first}") from None
        try:
            n = len(client.scheduler_info(n_workers=-1)["workers"])
            if n == 0:
                client.close()
                raise ClusterError(f"the Dask scheduler at {scheduler} has no workers: start some (dask worker "
                                   f"{scheduler}), then run again")  # fmt: skip
            log.info("connected to the Dask scheduler at %s (%d workers)", scheduler, n)
            yield Cluster(client, scheduler, local=False, workers=n)
        finally:
            client.close()
        return

    from distributed import LocalCluster

    with (
        processes.temporary_directory("dask") as scratch,
        dask.config.set(
            {
                "temporary-directory": scratch,
                "distributed.scheduler.allowed-failures": 0,
                # Workers start kernels and joblib pools of their own.
                "distributed.worker.daemon": False,
                "distributed.worker.multiprocessing-method": "forkserver",
            }
        ),
    ):
        _preload(preload)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, local_directory=scratch, silence_logs=logging.CRITICAL,
                               protocol="tcp")  # fmt: skip
        try:
            client = Client(cluster, set_as_default=False)
            try:
                log.info("local Dask cluster at %s: %d workers", cluster.scheduler_address, workers)
                yield Cluster(client, cluster.scheduler_address, local=True, workers=workers)
            finally:
                client.close()
        finally:
            cluster.close()


def _preload(modules: Sequence[str]) -> None:
    """What the fork server imports before it forks the workers: Dask's own list, and ``modules``."""
    import multiprocessing
    from multiprocessing import forkserver

    from distributed.utils import get_mp_context

    get_mp_context()  # Dask sets its list first; ours extends it (before the fork server starts)
    base = list(getattr(forkserver._forkserver, "_preload_modules", None) or ["distributed"])
    multiprocessing.get_context("forkserver").set_forkserver_preload([*base, *(m for m in modules if m not in base)])


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the fork server now, so that it imports ``preload`` while this process gets on with
    its own start (the store, the run): the LocalCluster's workers then fork from it at once."""
    from multiprocessing import forkserver

    import dask
    import distributed  # noqa: F401  (its config defaults, before dask.config.set touches them)

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        _preload(preload)
    forkserver.ensure_running()


def task_failure(exc: BaseException) -> str:
    """One line saying why a Dask task failed: its worker died, or what it raised."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return "the Dask worker running it died (KilledWorker)"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
