"""Real services for the team tests: a throwaway PostgreSQL cluster, free loopback ports.

The PostgreSQL cluster is Debian's PostgreSQL 15 (``.ci/run`` installs it): ``initdb`` into a
temporary folder, listening on 127.0.0.1 and a free port only (its Unix socket in that folder),
stopped by ``pg_ctl`` (which signals the postmaster by the PID it recorded) and removed at the end.
As root it runs as the ``postgres`` user, which PostgreSQL requires.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from mnistops import processes

# Debian 12's PostgreSQL 15 (CI); another Debian or Ubuntu release's version where that is absent.
_VERSIONS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name.zfill(4))
PG_BIN = (
    Path("/usr/lib/postgresql/15/bin")
    if Path("/usr/lib/postgresql/15/bin").is_dir()
    else (_VERSIONS[-1] if _VERSIONS else Path("/nonexistent"))
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def have_postgres() -> bool:
    return (PG_BIN / "initdb").exists() or shutil.which("initdb") is not None


def _bin(name: str) -> str:
    return str(PG_BIN / name) if (PG_BIN / name).exists() else name


@contextlib.contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A private PostgreSQL 15 cluster with ``database`` in it; yields its SQLAlchemy URL."""
    root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    with processes.temporary_directory("postgres") as tmp:
        folder = Path(tmp)
        data, port = folder / "data", free_port()
        if root:
            shutil.chown(folder, "postgres")
        subprocess.run(
            [*prefix, _bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
        subprocess.run(
            [*prefix, _bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-q",
                    "-c",
                    f"create database {database}",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
        finally:
            subprocess.run(
                [*prefix, _bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                check=False,
                capture_output=True,
                timeout=120,
            )
