"""Runs left RUNNING by a process that is gone.

A run normally ends FINISHED, FAILED or KILLED (:func:`mnistops.tracking.store.tracked_run`), but
a process killed with SIGKILL, by the OOM killer or by a closed laptop lid ends nothing. So each
run records who runs it (tags ``mnistops.owner.host``, ``.pid`` and ``.started``, the process's
start time, so that a pid the system gave to another process later is not mistaken for it), and
every command that opens the store ends the runs of this host whose process is gone: FAILED,
with the tag ``mnistops.ended_by`` saying why, and a warning line saying so. (Their temporary
folders are removed the same way: :func:`mnistops.processes.sweep`.)
"""

from __future__ import annotations

import logging
import os
import socket
import time

from mnistops import processes

log = logging.getLogger(__name__)

HOST, PID, STARTED = "mnistops.owner.host", "mnistops.owner.pid", "mnistops.owner.started"
ENDED_BY = "mnistops.ended_by"


def owner_tags() -> dict[str, str]:
    """Tags naming this process: host, pid and start time."""
    pid, start = processes.identity()
    return {HOST: socket.gethostname(), PID: str(pid), STARTED: f"{start:.2f}"}


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
        if tags.get(HOST) != host or PID not in tags:
            continue  # another machine's run (it may well be running), or one that names no owner
        try:
            pid, started = int(tags[PID]), float(tags.get(STARTED, "0"))
        except ValueError:
            continue
        if processes.alive(pid, started):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        c.set_tag(
            run.info.run_id,
            ENDED_BY,
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
    query = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
    stale = c.search_runs([run.info.experiment_id], query + (f" and {extra}" if extra else ""), max_results=1000)
    for r in stale:
        c.set_tag(r.info.run_id, ENDED_BY, why)
        c.set_terminated(r.info.run_id, status)
    return [r.info.run_id for r in stale]
