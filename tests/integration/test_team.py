"""A team's set-up, for real: PostgreSQL 15, ``mnistops tracking-server --auth`` (MLflow's own
server) on it, and ``train``, ``promote`` and a 6-trial ``sweep`` on a 2-worker Dask LocalCluster
against that server; then the record is read back through SQL and through MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from integration.services import free_port, have_postgres, postgres
from mnistops.serve import launch
from support import one_line_error, read_store, run_cli

pytestmark = pytest.mark.skipif(not have_postgres(), reason="needs Debian's PostgreSQL 15 (.ci/run installs it)")

ADMIN, PASSWORD, SECRET = "admin", "team-password-1234", "a-team-secret"
SPACE = """model: random_forest
params:
  n_estimators: {type: int, low: 20, high: 40, step: 10}
  max_depth: {type: int, low: 8, high: 14}
"""


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with postgres() as url:
        yield url


def _start_server(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    # The server logs every request on stderr: into a file, or a full pipe would stall it.
    log = cwd / f"server-{len(list(cwd.glob('server-*.log')))}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistops", "tracking-server", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, **env},
            cwd=cwd,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server prints it once /health answers
    if not line.startswith("export MLFLOW_TRACKING_URI="):
        proc.kill()
        raise AssertionError(f"no URI from the server: {line!r} {log.read_text()[-3000:]}")
    return proc, line.strip().split("=", 1)[1]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _sql(url: str, query: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as con:
        return list(con.execute(query).fetchall())


def test_train_promote_and_sweep_against_a_team_server_on_postgresql(
    database: str, store: Path, digits10k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    server_env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET, "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}
    proc, uri = _start_server(
        [
            "--backend",
            database,
            "--artifacts",
            str(store / "artifacts"),
            "--port",
            str(port),
            "--auth",
            "--workers",
            "1",
        ],
        server_env,
        store,
    )
    try:
        assert uri == f"http://127.0.0.1:{port}"
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=5"
        assert requests.get(search, timeout=30).status_code == 401
        assert requests.get(search, auth=(ADMIN, "wrong-password-1"), timeout=30).status_code == 401
        assert requests.get(search, auth=(ADMIN, PASSWORD), timeout=30).status_code == 200

        client_env = {
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        }
        data = ["--set", f"data.dataset={digits10k}", "--set", "gate.floor=0.5"]
        trained = run_cli(
            "train",
            "--json",
            *data,
            "--set",
            "model.params.n_estimators=10",
            "--set",
            "model.params.max_depth=8",
            env=client_env,
            cwd=store,
        )
        assert trained.returncode == 0, trained.stderr[-3000:]
        first = json.loads(trained.stdout)
        promoted = run_cli("promote", first["run_id"], "--json", *data, env=client_env, cwd=store)
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        assert json.loads(promoted.stdout)["promoted"] is True

        space = store / "space.yaml"
        space.write_text(SPACE)
        swept = run_cli(
            "sweep",
            "--space",
            str(space),
            "--trials",
            "6",
            "--workers",
            "2",
            "--promote",
            "--json",
            *data,
            env=client_env,
            cwd=store,
        )
        assert swept.returncode == 0, swept.stderr[-3000:]
        sweep = json.loads(swept.stdout)
        assert sweep["completed"] == 6, [t["error"] for t in sweep["trials"]]
        assert sweep["workers"] == 2 and sweep["scheduler"] == "local"
        assert sweep["promotion"]["promoted"] is True  # 20-40 trees beat 10
        assert sweep["model_version"] == "2"

        # Without credentials the same command is refused by the server: one line.
        refused = run_cli("runs", "list", env={"MLFLOW_TRACKING_URI": uri}, cwd=store)
        assert "401" in one_line_error(refused) or "credentials" in one_line_error(refused).lower()

        # Through MlflowClient (the server): every run, the links, the versions, the alias.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        seen = read_store(
            uri,
            f"""
import json, os
from mlflow.tracking import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name("mnistops")
runs = c.search_runs([exp.experiment_id])
versions = c.search_model_versions("name='mnist-classifier'")
champ = c.get_model_version_by_alias("mnist-classifier", "champion")
print(json.dumps({{"runs": {{r.info.run_id: [r.info.status, r.data.tags.get("mlflow.parentRunId"),
                              r.data.tags.get("mnistops.sweep.trial")] for r in runs}},
                  "versions": sorted((v.version, v.run_id) for v in versions),
                  "champion": [champ.version, champ.run_id],
                  "parent_params": c.get_run("{sweep["run_id"]}").data.params}}))
""",
        )
        assert isinstance(seen, dict)
        _the_alias_lock_holds_across_the_server(uri, client_env, sweep["best"]["run_id"], store)
    finally:
        assert _stop(proc) == 0
    runs = seen["runs"]
    children = {rid: r for rid, r in runs.items() if r[1] == sweep["run_id"]}
    assert len(runs) == 8 and len(children) == 6  # train, the sweep and its 6 trials
    assert sorted(int(r[2]) for r in children.values()) == [0, 1, 2, 3, 4, 5]
    assert all(r[0] == "FINISHED" for r in runs.values())
    assert seen["versions"] == [["1", first["run_id"]], ["2", sweep["best"]["run_id"]]]
    assert seen["champion"] == ["2", sweep["best"]["run_id"]]
    assert seen["parent_params"]["sweep.sampler"] == "TPESampler"

    # Through SQL (PostgreSQL itself, the server stopped): the same record.
    assert _sql(database, "select count(*) from runs")[0][0] == 8
    parent = sweep["run_id"]
    links = _sql(database, f"select count(*) from tags where key = 'mlflow.parentRunId' and value = '{parent}'")
    assert links[0][0] == 6
    assert _sql(database, "select status, count(*) from runs group by status") == [("FINISHED", 8)]
    assert sorted(_sql(database, "select version, run_id from model_versions where name = 'mnist-classifier'")) == [
        (1, first["run_id"]),
        (2, sweep["best"]["run_id"]),
    ]
    aliases = _sql(database, "select alias, version from registered_model_aliases")
    assert sorted(aliases) == [("champion", 2), ("previous", 1)]
    assert _sql(database, "select username from users") == [(ADMIN,)]  # basic auth's users, same database


def _the_alias_lock_holds_across_the_server(uri: str, env: dict[str, str], champion_run: str, cwd: Path) -> None:
    """Through a server, the alias lock is a registered model (mnistops.lifecycle.alias_lock): one
    held by a live process makes a rollback wait, then refuse with one line; one left by a process
    that is gone is broken by the next promotion. The registry is unchanged by both."""
    import socket

    from mlflow.tracking import MlflowClient

    from mnistops import processes

    client, lock = MlflowClient(uri), "mnist-classifier.aliases-lock"
    pid, start = processes.identity()
    held = {"mnistops.lock.holder": f"{socket.gethostname()}:{pid}", "mnistops.lock.started": f"{start:.2f}"}
    client.create_registered_model(lock, tags={**held, "mnistops.lock.since": f"{time.time():.2f}"})
    try:
        waited = run_cli("rollback", "--set", "gate.lock_wait_s=2", env=env, cwd=cwd)
        line = one_line_error(waited)
        assert waited.returncode == 2
        assert f"{held['mnistops.lock.holder']} has held the alias lock of 'mnist-classifier' for 2 s" in line
    finally:
        client.delete_registered_model(lock)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = {"mnistops.lock.holder": f"{socket.gethostname()}:{gone.pid}", "mnistops.lock.started": "1.00"}
    client.create_registered_model(lock, tags={**left, "mnistops.lock.since": f"{time.time():.2f}"})
    again = run_cli("promote", champion_run, "--json", env=env, cwd=cwd)
    assert again.returncode == 1 and "is already @champion" in json.loads(again.stdout)["reason"]
    assert "breaking the alias lock" in again.stderr
    assert [m.name for m in client.search_registered_models()] == ["mnist-classifier"]  # the lock is gone


def test_the_server_refuses_to_start_on_an_unreachable_database_or_without_its_secrets(store: Path) -> None:
    closed = free_port()
    line = one_line_error(
        run_cli(
            "tracking-server",
            "--backend",
            f"postgresql://postgres@127.0.0.1:{closed}/mlflow",
            "--port",
            str(free_port()),
            cwd=store,
        )
    )
    assert line.startswith(f"error: cannot reach postgresql at 127.0.0.1:{closed}")
    sqlite = f"sqlite:///{store / 'team.db'}"
    line = one_line_error(
        run_cli(
            "tracking-server",
            "--backend",
            sqlite,
            "--auth",
            "--port",
            str(free_port()),
            env={"MLFLOW_FLASK_SERVER_SECRET_KEY": ""},
            cwd=store,
        )
    )
    assert line.startswith("error: --auth: set MLFLOW_FLASK_SERVER_SECRET_KEY")
    line = one_line_error(
        run_cli(
            "tracking-server",
            "--backend",
            sqlite,
            "--auth",
            "--port",
            str(free_port()),
            env={"MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET, "MLFLOW_AUTH_ADMIN_PASSWORD": ""},
            cwd=store,
        )
    )
    assert line.startswith("error: --auth: set MLFLOW_AUTH_ADMIN_PASSWORD to the first admin's password")
    line = one_line_error(
        run_cli(
            "tracking-server",
            "--backend",
            sqlite,
            "--auth",
            "--port",
            str(free_port()),
            env={"MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"},
            cwd=store,
        )
    )
    assert "shorter than the 12 characters" in line
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_cli("tracking-server", "--backend", sqlite, "--port", str(port), cwd=store))
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port} (address already in use)")
    assert not (store / "basic_auth.db").exists() and not (store / "mlartifacts").exists()


def test_stopping_the_command_stops_the_server_it_started(store: Path) -> None:
    port = free_port()
    proc, uri = _start_server(
        ["--backend", f"sqlite:///{store / 'team.db'}", "--port", str(port), "--workers", "1"], {}, store
    )
    assert requests.get(uri + "/health", timeout=10).status_code == 200
    t0 = time.monotonic()
    assert _stop(proc) == 0
    assert time.monotonic() - t0 < 60
    with pytest.raises(requests.ConnectionError):
        requests.get(uri + "/health", timeout=5)


def test_a_killed_command_takes_its_server_and_workers_with_it(store: Path) -> None:
    """kill -9 of ``mnistops tracking-server`` (nothing of it runs to stop anything) ends MLflow's
    server and its workers all the same, and frees the port."""
    import psutil

    port = free_port()
    proc, uri = _start_server(
        ["--backend", f"sqlite:///{store / 'team.db'}", "--port", str(port), "--workers", "2"], {}, store
    )
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 3  # the guard, mlflow server, uvicorn and its workers
    proc.kill()
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=40)
    assert alive == [], [p.cmdline() for p in alive]
    with pytest.raises(requests.ConnectionError):
        requests.get(uri + "/health", timeout=5)


def test_two_servers_write_one_prediction_log_on_postgresql_that_monitor_and_from_log_read(
    store: Path, digits10k: Path
) -> None:
    data = ["--set", f"data.dataset={digits10k}", "--set", "gate.floor=0.5"]
    small = ["--set", "model.params.n_estimators=10", "--set", "model.params.max_depth=8"]
    trained = run_cli("train", "--promote", "--json", *data, *small, cwd=store)
    assert trained.returncode == 0, trained.stderr[-3000:]
    images = np.load(digits10k)["x_test"][:60]
    with postgres("predictions") as url:
        log = ["--set", f"serve.prediction_log={url}"]
        servers = [launch.start(log, cwd=store) for _ in range(2)]
        try:
            answers = []
            for i, server in enumerate(servers):
                launch.wait_ready(server)
                answers.append(server.predict(images[i * 30 : (i + 1) * 30])["predictions"])
            # A label sent to one server for a prediction the other made: one feedback table.
            items = [{"prediction_id": p["prediction_id"], "label": 3} for p in answers[0][:5]]
            assert servers[1].post("/feedback", json.dumps(items).encode())["stored"] == 5
            assert servers[1].post("/feedback", json.dumps(items[:1]).encode())["status"] == 409
        finally:
            assert [s.stop() for s in servers] == [0, 0]
        cli = ["--set", f"serve.prediction_log={url}", "--set", f"data.dataset={digits10k}"]
        watched = run_cli("monitor", "--since", "1h", "--json", *cli, cwd=store)
        assert watched.returncode in (0, 1), watched.stderr[-3000:]
        result = json.loads(watched.stdout)
        assert result["n"] == 60 and result["accuracy"]["labeled"]["n"] == 5
        assert result["window"]["prediction log"] == url  # no password in it to hide
        made = run_cli("data", "from-log", "--since", "1h", "--labeled-only", "fb.npz", "--json", *cli, cwd=store)
        assert made.returncode == 0, made.stderr[-3000:]
        assert json.loads(made.stdout)["labeled"] == 5
    ids = {p["prediction_id"] for p in answers[0] + answers[1]}
    assert len(ids) == 60
    line = one_line_error(run_cli("monitor", "--since", "1h", *cli, cwd=store))  # the database is gone
    assert line.startswith(f"error: the prediction log's database {url} cannot be read (")
