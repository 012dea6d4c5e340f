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
import os
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

    def placement(self) -> dict[str, list[str]]:
        """Each host's workers, by name in a fixed order: a worker's place among them picks its
        share of the host's cores (see :func:`confined`). A worker the nanny restarts keeps its name."""
        hosts: dict[str, list[str]] = {}
        for w in self.client.scheduler_info(n_workers=-1)["workers"].values():
            hosts.setdefault(w["host"], []).append(str(w["name"]))
        return {host: sorted(names, key=lambda n: (len(n), n)) for host, names in hosts.items()}


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
def connect(
    workers: int, scheduler: str | None = None, timeout: float = 10.0, preload: Sequence[str] = ()
) -> Iterator[Cluster]:
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
                raise ClusterError(
                    f"the Dask scheduler at {scheduler} has no workers: start some (dask worker "
                    f"{scheduler}), then run again"
                )
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
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            local_directory=scratch,
            silence_logs=logging.CRITICAL,
            protocol="tcp",
        )
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
    """Start the fork server now, so that it imports Dask and ``preload`` while this process gets
    on with its own start (the store, the run): the LocalCluster's workers then fork from it at once.

    Dask is not imported here first: that alone is most of a second before the fork server could
    start, on the path every sweep waits on. Dask's own preload list (``distributed`` and the
    packages it finds installed), set later in :func:`connect`, does not reach a fork server
    that is already running: ``distributed`` and ``preload`` import what a trial needs of them.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(["distributed", *preload])
    forkserver.ensure_running()


def _this_worker() -> tuple[str, str]:
    """This Dask worker's host and name; empty outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "", ""
    return worker.address.split("://")[-1].rsplit(":", 1)[0], str(worker.name)


def cpus() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@contextlib.contextmanager
def confined(placement: dict[str, list[str]], cores: int | None = None) -> Iterator[int]:
    """Run the calling thread, and the threads it starts, on this worker's share of its host's cores.

    The host's cores are dealt out to its workers in :meth:`Cluster.placement`'s order: ``cores``
    each, or with ``cores`` None the host's cores divided among its workers (at least one each;
    wrapping round when there are more asked for than there are). The thread's CPU affinity is
    set to them (Linux: a thread's affinity, which the threads it starts inherit) and the BLAS and
    OpenMP pools are held to that many threads (threadpoolctl). So K trials on a host do not
    fight over cores: a trial's helper threads (packing trees, scoring the held-out rows, the
    reference's PCA) run on its own cores, not on a neighbour's, and nothing starts a pool sized
    for the whole machine. Everything is restored on exit. Yields the number of cores.
    """
    from threadpoolctl import threadpool_limits

    host, name = _this_worker()
    count, mine = share(cpus(), placement.get(host, []), name, cores)
    old: set[int] | None = None
    if mine is not None and hasattr(os, "sched_setaffinity"):
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, mine)
        log.debug("worker %s runs on cores %s", name, sorted(mine))
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        if old is not None:
            os.sched_setaffinity(0, old)


def share(host_cpus: Sequence[int], peers: Sequence[str], name: str, cores: int | None) -> tuple[int, set[int] | None]:
    """How many cores the worker ``name`` gets among ``peers`` on a host with ``host_cpus``, and
    which: ``None`` for a worker that is not among them (it joined after the sweep started)."""
    count = min(len(host_cpus), cores or max(1, len(host_cpus) // max(1, len(peers))))
    if name not in peers:
        return count, None
    first = list(peers).index(name) * count
    return count, {host_cpus[(first + j) % len(host_cpus)] for j in range(count)}


def task_failure(exc: BaseException) -> str:
    """One line saying why a Dask task failed: its worker died, or what it raised."""
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return "the Dask worker running it died (KilledWorker)"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
