"""Housekeeping: runs left RUNNING by a process that is gone, and its temporary folders.

A run normally ends FINISHED, FAILED or KILLED (:func:`mnistops.tracking.store.tracked_run`), but
a process killed with SIGKILL, by the OOM killer or by a closed laptop lid ends nothing. So each
run records who runs it (tags ``mnistops.owner.host``, ``.pid`` and ``.started``, the process's
start time, so that a pid the system gave to another process later is not mistaken for it), and
every command that opens the store ends the runs of this host whose process is gone: FAILED,
with the tag ``mnistops.ended_by`` saying why, and a warning line saying so; their temporary
folders are removed the same way (:func:`mnistops.processes.sweep`). :func:`tidy` is that step,
which every command takes once it has checked the store (:func:`mnistops.tracking.store.check_store`
only checks).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from mnistops import processes, record

log = logging.getLogger(__name__)


def tidy(uri: str, write: bool = True) -> None:
    """End the runs left RUNNING by processes that are gone, and remove their temporary folders.

    Raises:
        TrackingError: the runs could not be ended, and the command writes to the store (one that
            only reads goes on: a read-only store is its owner's to tidy).
    """
    from mnistops.errors import TrackingError

    try:
        reap(uri)
    except Exception as exc:
        if write:
            raise TrackingError(f"tracking store {uri}: cannot end runs left RUNNING: {exc}") from None
        log.debug("could not end orphaned runs in %s: %s", uri, exc)
    processes.sweep()


def reap(uri: str) -> list[str]:
    """End FAILED every RUNNING run of this host whose process is gone; return their ids."""
    from mnistops.tracking.store import client

    c = client(uri)
    host = socket.gethostname()
    ended = []
    experiments = [e.experiment_id for e in c.search_experiments()]
    if not experiments:
        return []
    for run in c.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get(record.OWNER_HOST) != host or record.OWNER_PID not in tags:
            continue  # another machine's run (it may well be running), or one that names no owner
        try:
            pid, started = int(tags[record.OWNER_PID]), float(tags.get(record.OWNER_STARTED, "0"))
        except ValueError:
            continue
        if processes.alive(pid, started):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        c.set_tag(
            run.info.run_id,
            record.ENDED_BY,
            f"process {pid} on {host} ended without ending the run; marked FAILED at {when} by process {os.getpid()}",
        )
        c.set_terminated(run.info.run_id, "FAILED")
        ended.append(run.info.run_id)
        log.warning("run %s was left RUNNING by process %d, which is gone: marked FAILED", run.info.run_id, pid)
    return ended


def end_children(uri: str, parent_id: str, status: str, why: str, extra: str = "") -> list[str]:
    """End every run nested under ``parent_id`` that is still RUNNING (whoever ran it is gone):
    ``status``, with ``mnistops.ended_by`` set to ``why``; ``extra`` narrows the search
    (``tags.`mnistops.sweep.trial` = '3'``, say). Returns their ids."""
    from mnistops.tracking.store import client

    c = client(uri)
    run = c.get_run(parent_id)
    query = f"tags.`{record.PARENT_RUN_ID}` = '{parent_id}' and attributes.status = 'RUNNING'"
    stale = c.search_runs([run.info.experiment_id], query + (f" and {extra}" if extra else ""), max_results=1000)
    for r in stale:
        c.set_tag(r.info.run_id, record.ENDED_BY, why)
        c.set_terminated(r.info.run_id, status)
    return [r.info.run_id for r in stale]
