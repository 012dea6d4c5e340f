"""`mnistops serve` for real: a uvicorn process on 127.0.0.1 and a free port, serving models trained
in this module into a fresh SQLite store, called over HTTP, stopped with SIGTERM by its pid."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from mnistops.serve import launch
from support import CLOSED_MIRROR, metric, one_line_error

GOOD = ["--set", "model.params.n_estimators=25", "--set", "model.params.max_depth=14"]
BETTER = ["--set", "model.params.n_estimators=40", "--set", "model.params.max_depth=18"]
TOKEN = "s3cret-token"
POLL = 1.0


class Store:
    """A folder with a store holding two trained versions: v1 (@champion) and v2 (not promoted)."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.uri = env["MLFLOW_TRACKING_URI"]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mnistops", *args],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        """``python -c code`` in the store's folder, with its environment."""
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **self.env},
            check=False,
        )

    def start(self, *args: str, **kwargs: Any) -> launch.Server:
        return launch.start(list(args), env=self.env, cwd=self.work, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Store:
    work = tmp_path_factory.mktemp("serve")
    store = Store(
        work,
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
            "MNISTOPS_CACHE_DIR": str(session_cache),
            "MNISTOPS_MIRRORS": CLOSED_MIRROR,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
    )
    for args in ([*GOOD, "--promote"], BETTER):
        proc = store.cli("train", "--json", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return store


@pytest.fixture(scope="module")
def server(trained: Store) -> Iterator[launch.Server]:
    """The champion (v1) served with an admin token, polling only every 10 minutes."""
    s = trained.start(
        "--set",
        f"serve.admin_token={TOKEN}",
        "--set",
        "serve.prediction_log=served.db",
        "--set",
        "serve.poll_seconds=600",
    )
    launch.wait_ready(s)
    yield s
    s.stop()


def offline(trained: Store, version: str, images: np.ndarray) -> np.ndarray:
    """Probabilities from the registered version loaded in this process, as MLflow loads it."""
    import mlflow

    mlflow.set_tracking_uri(trained.uri)
    model = mlflow.pyfunc.load_model(f"models:/mnist-classifier/{version}")
    frame = model.predict(images)
    return np.asarray(frame[[f"prob_{i}" for i in range(10)]].to_numpy())


def png(array: np.ndarray, mode: str = "L") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.xdist_group("serve")
def test_answers_agree_with_the_model_offline_and_are_counted_and_logged(trained: Store, mnist: Dataset) -> None:
    images = mnist.images[-200:]
    s = trained.start("--set", "serve.prediction_log=agree.db")
    try:
        launch.wait_ready(s)
        before = s.get("/metrics")
        ints = s.post("/predict", json.dumps({"images": images[:100].tolist()}).encode())
        floats = s.post("/predict", json.dumps({"images": (images[100:] / 255).reshape(100, 784).tolist()}).encode())
        served = [*ints["predictions"], *floats["predictions"]]
        after = s.get("/metrics")
    finally:
        assert s.stop() == 0
    want = offline(trained, "1", images)
    assert ints["model"]["version"] == floats["model"]["version"] == "1"
    assert [p["label"] for p in served] == want.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in served], want, atol=1e-6)
    assert all(p["confidence"] == max(p["probabilities"]) for p in served)
    assert metric(after, "mnistops_predictions_total") - metric(before, "mnistops_predictions_total") == 200
    counts = np.bincount(want.argmax(axis=1), minlength=10)
    for label in range(10):
        assert metric(after, "mnistops_predictions_total", label=str(label)) == counts[label]
    assert metric(after, "mnistops_requests_total", endpoint="/predict", status="200") == 2
    assert metric(after, "mnistops_request_seconds_count", endpoint="/predict") == 2
    assert metric(after, "mnistops_prediction_confidence_count") == 200
    assert (
        metric(after, "mnistops_model_info", name="mnist-classifier", version="1", run_id=ints["model"]["run_id"]) == 1
    )

    # After SIGTERM every prediction is in the log, in order, with the image as it was sent.
    with sqlite3.connect(trained.work / "agree.db") as db:
        rows = db.execute("SELECT version, image, label, confidence, endpoint FROM predictions ORDER BY id").fetchall()
    assert len(rows) == 200
    assert {r[0] for r in rows} == {"1"} and {r[4] for r in rows} == {"/predict"}
    logged = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(200, 28, 28)
    np.testing.assert_array_equal(logged, images)
    assert [r[2] for r in rows] == want.argmax(axis=1).tolist()
    np.testing.assert_allclose([r[3] for r in rows], want.max(axis=1), atol=1e-9)


@pytest.mark.xdist_group("serve")
def test_the_packed_forest_answers_exactly_as_the_forest_on_the_whole_held_out_split(
    trained: Store, mnist: Dataset
) -> None:
    """The server's fast path (mnistops.lifecycle.packed) against scikit-learn's own predict_proba
    of the same registered version, on all 14,000 held-out images: the same bits."""
    from mnistops.data.split import make_split
    from mnistops.lifecycle import versions

    held_out = mnist.images[make_split(mnist).test]
    assert len(held_out) == 14_000
    loaded = versions.load("models:/mnist-classifier/2", trained.uri)
    assert loaded.packed is not None and len(loaded.packed.roots) == 40
    fast = loaded.predict_proba(held_out)
    model = loaded.pyfunc.unwrap_python_model()
    features = versions._features(model, held_out)
    reference = model.predict_proba(features)
    assert np.array_equal(fast.argmax(axis=1), reference.argmax(axis=1))
    assert np.abs(fast - reference).max() <= 1e-6
    np.testing.assert_array_equal(fast, versions.forest_proba(versions._forest_of(model), features))
    for n in (1, 7, 33, 300):  # a part of one lane group, several, a remainder, split over the cores
        np.testing.assert_array_equal(loaded.predict_proba(held_out[:n]), fast[:n])

    # Without numba (as if not installed): MLflow's own loading, and mnistops's, answer the same.
    np.save(trained.work / "held_out_200.npy", held_out[:200])
    code = (
        "import sys, json, numpy as np\n"
        "class NoNumba:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('numba', 'llvmlite'):\n"
        '            raise ModuleNotFoundError(f"No module named {name!r}", name=name)\n'
        "sys.meta_path.insert(0, NoNumba())\n"
        "import mlflow\n"
        "from mnistops.lifecycle import versions\n"
        "images = np.load('held_out_200.npy')\n"
        "frame = mlflow.pyfunc.load_model('models:/mnist-classifier/2').predict(images)\n"
        f"ours = versions.load('models:/mnist-classifier/2', {trained.uri!r})\n"
        "print(json.dumps({'packed': ours.packed is not None, 'numba': 'numba' in sys.modules,\n"
        "    'stock': frame[[f'prob_{i}' for i in range(10)]].to_numpy().tolist(),\n"
        "    'ours': ours.predict_proba(images).tolist()}))\n"
    )
    proc = trained.python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    without = json.loads(proc.stdout.splitlines()[-1])
    assert without["packed"] is False and without["numba"] is False
    np.testing.assert_array_equal(without["ours"], fast[:200])
    np.testing.assert_allclose(without["stock"], fast[:200], atol=1e-12)


@pytest.mark.xdist_group("serve")
def test_health_ready_model_page_and_image_upload(server: launch.Server, trained: Store, mnist: Dataset) -> None:
    assert server.get("/health") == {"status": "ok"}
    assert server.get("/ready") == {"status": "ready", "model": "mnist-classifier", "version": "1"}
    info = server.get("/model")
    assert info["name"] == "mnist-classifier" and info["version"] == "1"
    assert info["data_fingerprint"] == mnist.fingerprint
    assert 0.9 < info["metrics"]["accuracy"] < 1 and set(info["metrics"]) >= {"accuracy", "f1_macro"}
    assert info["following"] == "models:/mnist-classifier@champion"
    import urllib.request

    with urllib.request.urlopen(server.url + "/", timeout=10) as r:
        page = r.read().decode()
    assert "<canvas" in page and "predict/image" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch from anywhere else

    # A real test image, drawn large, dark on light, in colour, off-centre: made MNIST-like again.
    image = mnist.images[-1]
    big = np.full((300, 420), 255, np.uint8)
    from PIL import Image

    big[40:264, 150:374] = 255 - np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC))
    answer = server.post("/predict/image", png(big, "RGB"), "image/png")
    assert answer["predictions"][0]["label"] == int(mnist.labels[-1])
    seen = np.asarray(answer["input"], np.uint8)
    assert seen.shape == (28, 28)
    assert np.corrcoef(seen.ravel().astype(float), image.ravel().astype(float))[0, 1] > 0.8
    # The same image as a multipart upload and as a JPEG gives the same class.
    boundary = "mnistopsboundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png(big)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = server.post("/predict/image", form, f"multipart/form-data; boundary={boundary}")
    assert multipart["predictions"][0]["label"] == answer["predictions"][0]["label"]
    out = io.BytesIO()
    Image.fromarray(big).save(out, format="JPEG", quality=90)
    assert server.post("/predict/image", out.getvalue(), "image/jpeg")["predictions"][0]["label"] == int(
        mnist.labels[-1]
    )


def _bomb(side: int) -> bytes:
    """A 1-bit PNG of side x side white pixels: a few KB that decode to side² pixels."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (side, side), 1).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _gif() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (28, 28), 0).save(out, format="GIF")
    return out.getvalue()


IMAGE = [[0] * 28 for _ in range(28)]
BAD_JSON = [
    (b"not json", 400, "the body is not JSON"),
    (b"[1, 2]", 422, 'expected a JSON object {"images": [...]}'),
    (b'{"pictures": []}', 422, 'expected a JSON object {"images": [...]}'),
    (b'{"images": "abc"}', 422, "images must be a list of images, not str"),
    (b'{"images": []}', 422, "images is empty"),
    (json.dumps({"images": [[[0] * 27] * 28]}).encode(), 422, "images[0] has shape [28, 27]"),
    (json.dumps({"images": [IMAGE, [0] * 100]}).encode(), 422, "images[1] has shape [100]"),
    (json.dumps({"images": [[[0] * 28] * 27 + [[0] * 20]]}).encode(), 422, "images[0] has rows of different lengths"),
    (json.dumps({"images": [[["a"] * 28] * 28]}).encode(), 422, "images[0] holds 'a', not a number"),
    (json.dumps({"images": ["abc"]}).encode(), 422, "images[0] is a str"),
    (json.dumps({"images": [[[300] * 28] * 28]}).encode(), 422, "images[0] has pixel values 300..300"),
    (json.dumps({"images": [[[-1] * 28] * 28]}).encode(), 422, "integers must be 0..255"),
    (json.dumps({"images": [[1.5] + [0.5] * 783]}).encode(), 422, "floats must be in [0, 1]"),
    (b'{"images": [[NaN' + b", 0.5" * 783 + b"]]}", 422, "images[0] holds NaN or infinity"),
    (json.dumps({"images": [IMAGE] * 257}).encode(), 413, "257 images in one request; at most 256"),
    (json.dumps({"images": [[[255] * 28] * 28] * 300}).encode(), 413, "at most 1,000,000 (serve.max_body_bytes)"),
    (b"[" * 100_000 + b"]" * 100_000, 422, "the JSON nests 100,000 levels deep; at most 16"),
    (b'{"images": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 422, "the JSON nests 50,001 levels deep"),
]
BAD_UPLOADS = [
    (b"", "image/png", 422, "the upload is empty"),
    (b"\x89PNG\r\n\x1a\n this is not really a png", "image/png", 415, "not an image Pillow can read"),
    (b"plain words", "text/plain", 415, "not an image Pillow can read"),
    ("gif", "image/gif", 415, "the upload is a GIF image; send a PNG or JPEG"),
    ("bomb", "image/png", 413, "the image is 5000x5000 pixels; at most 16,000,000 pixels"),
    ("huge bomb", "image/png", 413, "the image is too large to decode"),
    ("blank", "image/png", 422, "the image is blank"),
    ("form without file", "multipart/form-data; boundary=b", 422, "the form holds no file"),
    ("broken form", "multipart/form-data", 400, "the multipart form could not be read"),
]


BAD_RAW = [
    (b"", 422, "the body is empty: send n x 784 bytes"),
    (bytes(785), 422, "the body is 785 bytes, not a multiple of 784"),
    (bytes(784 * 257), 413, "257 images in one request; at most 256 (serve.max_batch)"),
    (bytes(784 * 1276), 413, "the body is 1,000,384 bytes; at most 1,000,000 (serve.max_body_bytes)"),
]


@pytest.mark.parametrize(("body", "status", "detail"), BAD_RAW, ids=[d for _, _, d in BAD_RAW])
@pytest.mark.xdist_group("serve")
def test_bad_raw_pixels_get_a_4xx_that_says_what_was_wrong(
    server: launch.Server, body: bytes, status: int, detail: str
) -> None:
    answer = server.post("/predict", body, content_type="application/octet-stream")
    assert answer["status"] == status, answer
    assert detail in answer["detail"], answer


@pytest.mark.xdist_group("serve")
def test_raw_pixels_get_the_json_answers_and_every_answer_says_where_its_time_went(
    server: launch.Server, mnist: Dataset
) -> None:
    import httpx

    images = mnist.images[-40:-30]
    as_json = httpx.post(server.url + "/predict", content=json.dumps({"images": images.tolist()}), timeout=30)
    raw = httpx.post(
        server.url + "/predict",
        content=images.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert as_json.status_code == raw.status_code == 200
    strip = [{k: v for k, v in p.items() if k != "prediction_id"} for p in raw.json()["predictions"]]
    assert strip == [{k: v for k, v in p.items() if k != "prediction_id"} for p in as_json.json()["predictions"]]
    assert len({p["prediction_id"] for p in raw.json()["predictions"]}) == 10  # each logged on its own
    stages = dict(part.strip().split(";dur=") for part in raw.headers["server-timing"].split(","))
    assert list(stages) == ["read", "parse", "wait", "model", "handoff", "log", "encode", "app"]
    ms = {name: float(value) for name, value in stages.items()}
    assert all(v >= 0 for v in ms.values()) and ms["model"] > 0
    assert sum(v for k, v in ms.items() if k != "app") <= ms["app"]


@pytest.mark.parametrize(("body", "status", "detail"), BAD_JSON, ids=[d for _, _, d in BAD_JSON])
@pytest.mark.xdist_group("serve")
def test_bad_json_gets_a_4xx_that_says_what_was_wrong(
    server: launch.Server, body: bytes, status: int, detail: str
) -> None:
    answer = server.post("/predict", body)
    assert answer["status"] == status, answer
    assert detail in answer["detail"], answer


@pytest.mark.parametrize(("body", "kind", "status", "detail"), BAD_UPLOADS, ids=[d for *_, d in BAD_UPLOADS])
@pytest.mark.xdist_group("serve")
def test_bad_uploads_get_a_4xx_that_says_what_was_wrong(
    server: launch.Server, body: bytes | str, kind: str, status: int, detail: str
) -> None:
    made = {
        "gif": _gif,
        "bomb": lambda: _bomb(5000),
        "huge bomb": lambda: _bomb(20000),
        "blank": lambda: png(np.full((50, 50), 200, np.uint8)),
        "form without file": lambda: b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
        "broken form": lambda: b"garbage",
    }
    data = made[body]() if isinstance(body, str) else body
    assert len(data) < 200_000  # the bombs are small files
    answer = server.post("/predict/image", data, kind)
    assert answer["status"] == status, answer
    assert detail in answer["detail"], answer


@pytest.mark.xdist_group("serve")
def test_refusals_are_counted_as_errors_and_the_server_keeps_answering(server: launch.Server, mnist: Dataset) -> None:
    before = server.get("/metrics")
    assert server.post("/predict", b'{"images": []}')["status"] == 422
    assert server.post("/predict/image", b"nope", "image/png")["status"] == 415
    after = server.get("/metrics")
    for endpoint, status in (("/predict", "422"), ("/predict/image", "415")):
        labels = {"endpoint": endpoint, "status": status}
        assert (
            metric(after, "mnistops_request_errors_total", **labels)
            - metric(before, "mnistops_request_errors_total", **labels)
            == 1
        )
    assert metric(after, "mnistops_request_errors_total", status="500") == 0
    assert server.post("/predict", json.dumps({"images": [mnist.images[0].tolist()]}).encode())["predictions"]


def _reload(server: launch.Server, token: str | None) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(server.url + "/admin/reload", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.xdist_group("serve")
def test_admin_reload_needs_the_token_and_switches_at_once(server: launch.Server, trained: Store) -> None:
    """The module's server polls every 10 minutes: only /admin/reload can make it switch here."""
    assert _reload(server, None) == (403, {"detail": "a valid bearer token is required"})
    assert _reload(server, "wrong") == (403, {"detail": "a valid bearer token is required"})
    assert _reload(server, TOKEN) == (200, {"changed": False, "version": "1"})

    assert trained.cli("promote", "--latest").returncode == 0  # v2
    assert server.get("/model")["version"] == "1"  # not yet: no poll in 10 minutes
    assert _reload(server, TOKEN) == (200, {"changed": True, "version": "2"})
    assert server.get("/model")["version"] == "2"
    assert trained.cli("rollback").returncode == 0  # v1 again, v2 marked rolled back
    assert _reload(server, TOKEN) == (200, {"changed": True, "version": "1"})
    assert metric(server.get("/metrics"), "mnistops_model_loads_total") == 3

    # A server with no token configured has the endpoint disabled.
    plain = trained.start("--set", "serve.prediction_log=null")
    try:
        assert _reload(plain, TOKEN) == (403, {"detail": "admin endpoints are disabled: set serve.admin_token"})
    finally:
        plain.stop()


@pytest.mark.xdist_group("serve")
def test_follows_the_champion_under_load_without_a_failed_request(trained: Store, mnist: Dataset) -> None:
    """@champion moves from v1 to v2 while 4 clients keep asking: no request fails, and every
    request sent after the first answer from v2 is answered by v2."""
    import httpx

    s = trained.start("--set", f"serve.poll_seconds={POLL}", "--set", "serve.prediction_log=switch.db")
    ready = launch.wait_ready(s)
    answers: list[tuple[float, float, str, int]] = []  # (sent, answered, version, status)
    stop = threading.Event()
    body = json.dumps({"images": [mnist.images[i].tolist() for i in range(4)]})

    def client() -> None:
        with httpx.Client(base_url=s.url, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post("/predict", content=body, headers={"Content-Type": "application/json"})
                    version = r.json()["model"]["version"] if r.status_code == 200 else r.text
                    answers.append((sent, time.monotonic(), version, r.status_code))
                except httpx.HTTPError as exc:
                    answers.append((sent, time.monotonic(), repr(exc), 0))

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        v2 = json.loads(trained.cli("runs", "list", "--json").stdout)[0]["run_id"]
        promoting = time.monotonic()
        promoted = trained.cli("promote", v2, "--force")  # v2 was rolled back by the test before
        assert promoted.returncode == 0, promoted.stderr
        moved = time.monotonic()
        deadline = moved + 60
        while time.monotonic() < deadline and not any(a[2] == "2" for a in answers):
            time.sleep(0.05)
        time.sleep(1.0)
        metrics = s.get("/metrics")
        info = s.get("/model")
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert s.stop() == 0
    assert ready["version"] == "1"
    failed = [a for a in answers if a[3] != 200]
    assert failed == [], failed[:5]
    assert len(answers) > 50
    switched = min(answered for _, answered, v, _ in answers if v == "2")
    # Found by the next poll (at most POLL seconds) and loaded meanwhile (a forest loads in about
    # a second; allow for a busy machine). The time is printed for the record.
    print(f"answers switched {switched - moved:.2f} s after the promotion (poll every {POLL:g} s)")
    assert switched - moved < POLL + 10, switched - moved
    assert {v for sent, _, v, _ in answers if sent > switched} == {"2"}  # the swap is atomic
    assert {v for _, answered, v, _ in answers if answered < promoting} == {"1"}
    assert info["version"] == "2"
    assert metric(metrics, "mnistops_model_info", version="2") == 1
    assert metric(metrics, "mnistops_model_info", version="1") == 0
    with sqlite3.connect(trained.work / "switch.db") as db:
        logged = dict(db.execute("SELECT version, COUNT(*) FROM predictions GROUP BY version").fetchall())
    assert sum(logged.values()) == 4 * len(answers)  # every answered image, after SIGTERM
    assert logged["2"] == 4 * sum(a[2] == "2" for a in answers)


@pytest.mark.xdist_group("serve")
def test_several_workers_share_the_port_and_sum_their_metrics(trained: Store, mnist: Dataset) -> None:
    """Two worker processes: the metrics are summed, every answer is in the one prediction log
    (both write it), and a label sent for an answer is stored whichever worker answered it."""
    s = trained.start("--workers", "2", "--set", "serve.prediction_log=workers.db")
    try:
        launch.wait_ready(s)
        body = json.dumps({"images": [mnist.images[0].tolist()]}).encode()
        answers = [s.post("/predict", body)["predictions"][0] for _ in range(20)]
        assert {a["label"] for a in answers} == {int(mnist.labels[0])}
        labeled = [
            s.post("/feedback", json.dumps({"prediction_id": a["prediction_id"], "label": 3}).encode())
            for a in answers[:6]
        ]
        text = s.get("/metrics")
    finally:
        assert s.stop() == 0
    assert metric(text, "mnistops_predictions_total") == 20
    assert metric(text, "mnistops_model_info") == 1  # one version answers, whichever the champion is
    assert [a.get("stored") for a in labeled] == [1] * 6, labeled
    assert metric(text, "mnistops_feedback_total") == 6
    with sqlite3.connect(trained.work / "workers.db") as db:
        logged = [row[0] for row in db.execute("SELECT pid FROM predictions")]
        stored = db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    assert sorted(logged) == sorted(a["prediction_id"] for a in answers)
    assert stored == 6


@pytest.mark.xdist_group("serve")
def test_serve_refuses_what_would_fail_later_with_one_line(trained: Store) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(trained.cli("serve", "--port", str(port), timeout=60))
    assert f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    line = one_line_error(trained.cli("serve", "--set", "serve.prediction_log=no/such/dir/p.db", timeout=60))
    assert "the prediction log's folder" in line and "does not exist" in line
    line = one_line_error(trained.cli("serve", "--model", "models:/mnist-classifier/99", timeout=60))
    assert "model models:/mnist-classifier/99 is not in the registry" in line
    line = one_line_error(trained.cli("serve", "--port", "70000", timeout=60))
    assert "serve.port" in line
    assert not (trained.work / "no").exists()


def test_a_store_without_a_champion_serves_once_one_is_promoted(tmp_path: Path, session_cache: Path) -> None:
    """No @champion yet: the server starts, /ready is 503 with a detail, and the first promotion
    is picked up by the next poll."""
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MNISTOPS_CACHE_DIR": str(session_cache),
        "MNISTOPS_MIRRORS": CLOSED_MIRROR,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    store = Store(tmp_path, env)
    trained = store.cli("train", "--set", "model.params.n_estimators=10", "--set", "model.params.max_depth=10")
    assert trained.returncode == 0, trained.stderr[-2000:]
    s = store.start(
        "--set", f"serve.poll_seconds={POLL}", "--set", "serve.prediction_log=null", log=tmp_path / "serve.log"
    )
    try:
        import urllib.error

        with pytest.raises(urllib.error.HTTPError) as no_model:
            s.get("/ready")
        assert no_model.value.code == 503
        assert "no model is loaded yet" in json.loads(no_model.value.read())["detail"]
        assert s.post("/predict", json.dumps({"images": [IMAGE]}).encode())["status"] == 503
        assert store.cli("promote", "--latest", "--set", "gate.floor=0.9").returncode == 0
        assert launch.wait_ready(s, timeout=60)["version"] == "1"
    finally:
        s.stop()
    assert "/ready answers 503 until one is promoted" in s.log.read_text()


STARTER = """
import sys
from mnistops.serve import launch
s = launch.start(["--workers", "2", "--set", "serve.prediction_log=null"], cwd=sys.argv[1])
print(s.url, flush=True)
import time
time.sleep(600)
"""


@pytest.mark.xdist_group("serve")
def test_a_server_ends_with_the_process_that_started_it_however_it_ends(trained: Store) -> None:
    """A notebook's kernel that starts a server and is then killed (SIGKILL: no atexit runs) takes
    the server and its two workers with it."""
    import urllib.error
    import urllib.request

    import psutil

    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(trained.work)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **trained.env},
    )
    try:
        assert starter.stdout is not None
        url = starter.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        family = psutil.Process(starter.pid).children(recursive=True)
        assert len(family) >= 4  # the guard, the server, its two workers
    finally:
        starter.kill()
        starter.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=40)
    assert alive == [], [p.cmdline() for p in alive]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/health", timeout=5)
    from mnistops import processes

    left = processes.sweep()  # what the next mnistops command does: the dead starter's log folder goes
    assert [p.name.split("-")[1] for p in left] == [str(starter.pid)]


def _oversized(n: int = 5000) -> bytes:
    """``n`` blank images as JSON: past serve.max_body_bytes (12 MB for 5,000), within the 16 MB
    the server reads and drops before it answers."""
    return json.dumps({"images": [[[0] * 28] * 28] * n}).encode()


@pytest.mark.xdist_group("serve")
def test_every_client_reads_the_413_of_a_body_past_the_limit(server: launch.Server, tmp_path: Path) -> None:
    """Clients that send the whole body before they read (urllib, requests) used to see "connection
    reset by peer": the server closed with the body unread. It reads and drops it (up to 16 MB)."""
    import urllib.error
    import urllib.request

    import httpx
    import requests

    body = _oversized()
    assert 8_000_000 < len(body) < 16_000_000
    want = f"the body is {len(body):,} bytes; at most 1,000,000 (serve.max_body_bytes)"
    request = urllib.request.Request(server.url + "/predict", data=body, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and json.loads(refused.value.read())["detail"] == want
    answer = requests.post(server.url + "/predict", data=body, timeout=60)
    assert answer.status_code == 413 and answer.json()["detail"] == want
    answer2 = httpx.post(server.url + "/predict", content=body, timeout=60)
    assert answer2.status_code == 413 and answer2.json()["detail"] == want
    (tmp_path / "body.json").write_bytes(body)
    curl = subprocess.run(
        ["curl", "-s", "-w", "\\n%{http_code}", "--data-binary", f"@{tmp_path / 'body.json'}", server.url + "/predict"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    detail, code = curl.stdout.rsplit("\n", 1)
    assert code == "413" and json.loads(detail)["detail"] == want


@pytest.mark.xdist_group("serve")
def test_a_chunked_upload_is_refused_at_the_limit_as_it_streams(server: launch.Server) -> None:
    """No Content-Length to refuse it by: the body is counted as it comes and refused once past the
    limit; what follows is read and dropped, never kept: the server's memory does not grow with a
    200 MB upload (it used to read and spool all of it before its 413)."""
    import httpx
    import psutil

    served = [p for p in psutil.Process(server.process.pid).children(recursive=True) if "serve" in p.cmdline()]
    before = served[0].memory_info().rss
    sent = [0]

    def chunks(megabytes: int) -> Any:
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n\r\n'
        for _ in range(megabytes):
            sent[0] += 1_000_000
            yield b"\0" * 1_000_000

    kinds = {"Content-Type": "multipart/form-data; boundary=b"}
    with httpx.Client(timeout=120) as http:
        for megabytes in (5, 200):
            answer = http.post(server.url + "/predict/image", content=chunks(megabytes), headers=kinds)
            assert answer.status_code == 413
            assert answer.json()["detail"] == "the body passed 1,000,000 bytes (serve.max_body_bytes)"
    assert sent[0] == 205_000_000
    assert served[0].memory_info().rss - before < 50_000_000  # not the 160 MB of a spooled body
    assert server.get("/health") == {"status": "ok"}


def _health_while(server: launch.Server, work: Any) -> tuple[list[float], float]:
    """Seconds each ``/health`` took while ``work()`` ran on four threads, and ``work``'s slowest."""
    import threading

    done, took, latencies = threading.Event(), [], []

    def one() -> None:
        t0 = time.perf_counter()
        work()
        took.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    waiter = threading.Thread(target=lambda: [t.join() for t in threads] and done.set())
    waiter.start()
    while not done.is_set():
        t0 = time.perf_counter()
        assert server.get("/health") == {"status": "ok"}
        latencies.append(time.perf_counter() - t0)
    waiter.join()
    return latencies, max(took)


@pytest.mark.xdist_group("serve")
def test_health_answers_while_large_uploads_are_decoded(server: launch.Server) -> None:
    """Four 4000x4000 PNGs (31 KB each, inside the 16-megapixel limit) decode on the server's
    threads: /health keeps answering meanwhile, each time in a small part of an upload's time (it
    waited for the decoding, up to 1.8 s, when that ran on the event loop)."""
    from PIL import Image

    out = io.BytesIO()
    big = Image.new("L", (4000, 4000), 255)
    big.paste(0, (1500, 1000, 2500, 3000))  # a dark bar: something to make MNIST-like
    big.save(out, format="PNG", optimize=True)
    data = out.getvalue()
    assert len(data) < 100_000

    latencies, slowest_upload = _health_while(server, lambda: server.post("/predict/image", data, "image/png"))
    print(f"/health: {len(latencies)} answers, slowest {max(latencies):.3f} s; slowest upload {slowest_upload:.3f} s")
    assert len(latencies) >= 5
    assert max(latencies) < slowest_upload / 4


@pytest.mark.xdist_group("serve")
def test_the_prediction_log_keeps_every_answer_through_a_lock_and_a_full_disk(
    trained: Store, mnist: Dataset, tmp_path: Path
) -> None:
    """The log on a 2 MB tmpfs (root; else on plain disk, the lock alone): another process holds
    its write lock for 8 s, then the disk fills for a few seconds. /health says so while it lasts,
    nothing is dropped, and after SIGTERM every answered prediction is in the log."""
    import contextlib

    from support import LOCKER, fill, tiny_disk

    disk = tmp_path / "disk"
    mounted = os.geteuid() == 0
    with tiny_disk(disk, "2m") if mounted else contextlib.nullcontext(disk.mkdir() or disk):
        log = disk / "served.db"
        s = trained.start("--set", f"serve.prediction_log={log}", "--set", "serve.poll_seconds=600")
        answered = 0
        try:
            launch.wait_ready(s)
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(log), "8"], stdout=subprocess.PIPE, text=True)
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            for i in range(30):
                answered += len(s.predict(mnist.images[i : i + 1])["predictions"])
            time.sleep(2.0)
            health = s.get("/health")
            assert health["status"] == "degraded" and "database is locked" in health["prediction_log"], health
            assert locker.wait(timeout=60) == 0
            for i in range(30, 80):
                answered += len(s.predict(mnist.images[i : i + 1])["predictions"])
            if mounted:
                filler = fill(disk)
                for i in range(80, 120):
                    answered += len(s.predict(mnist.images[i : i + 1])["predictions"])
                time.sleep(2.0)
                assert s.get("/health")["status"] == "degraded"
                filler.unlink()
            deadline = time.monotonic() + 30
            while s.get("/health") != {"status": "ok"} and time.monotonic() < deadline:
                time.sleep(0.2)
            assert s.get("/health") == {"status": "ok"}
            text = s.get("/metrics")
        finally:
            assert s.stop() == 0
        with contextlib.closing(sqlite3.connect(log)) as db:
            logged = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    assert answered == (120 if mounted else 80) and logged == answered
    assert metric(text, "mnistops_prediction_log_dropped_total") == 0
    assert metric(text, "mnistops_prediction_log_errors_total") >= 3


def _feedback_rows(trained: Store) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(trained.work / "served.db")) as db:
        return dict(db.execute("SELECT pid, label FROM feedback").fetchall())


@pytest.mark.xdist_group("serve")
def test_feedback_labels_answers_counts_them_and_refuses_bad_labels_storing_nothing(
    server: launch.Server, trained: Store, mnist: Dataset
) -> None:
    images, truth = mnist.images[-40:], mnist.labels[-40:]
    before = server.get("/metrics")
    answer = server.predict(images)
    ids = [p["prediction_id"] for p in answer["predictions"]]
    assert len(set(ids)) == 40 and all(isinstance(i, str) and len(i) == 32 for i in ids)
    predicted = np.array([p["label"] for p in answer["predictions"]])
    labeled_before = _feedback_rows(trained)

    # Bad input: 4xx with a detail, and not one label stored.
    bad = [
        ({"prediction_id": "0" * 32, "label": 3}, 404, "no prediction"),
        ({"prediction_id": ids[0], "label": 10}, 422, "from 0 to 9"),
        ({"prediction_id": ids[0], "label": "7"}, 422, "from 0 to 9"),
        ({"prediction_id": ids[0], "label": True}, 422, "from 0 to 9"),
        ({"prediction_id": ids[0], "label": 1, "labels": 2}, 422, "unknown field"),
        ([{"prediction_id": ids[0], "label": 1}, {"prediction_id": ids[0], "label": 2}], 422, "twice"),
        ([{"prediction_id": ids[0], "label": 1}] * 257, 413, "serve.max_batch"),
        ([], 422, "empty"),
    ]
    for body, status, words in bad:
        refused = server.post("/feedback", json.dumps(body).encode())
        assert refused["status"] == status and words in refused["detail"], (body if len(body) < 5 else "list", refused)
    assert server.post("/feedback", b"{not json")["status"] == 400
    assert _feedback_rows(trained) == labeled_before

    # The true labels, as a list; then one of them again: refused (409) until it says replace.
    stored = server.post(
        "/feedback",
        json.dumps([{"prediction_id": i, "label": int(t)} for i, t in zip(ids, truth, strict=True)]).encode(),
    )
    right = int((predicted == truth).sum())
    assert stored["stored"] == 40 and stored["correct"] == right
    again = server.post("/feedback", json.dumps({"prediction_id": ids[0], "label": int(truth[0])}).encode())
    assert again["status"] == 409 and '"replace": true' in again["detail"]
    wrong = (int(truth[0]) + 1) % 10
    replaced = server.post("/feedback", json.dumps({"prediction_id": ids[0], "label": wrong, "replace": True}).encode())
    assert replaced["stored"] == 1
    rows = _feedback_rows(trained)
    assert {i: rows[i] for i in ids} == {i: (wrong if i == ids[0] else int(t)) for i, t in zip(ids, truth, strict=True)}
    # Counted, and the live accuracy is the share right among the labeled (all labeled here so far).
    after = server.get("/metrics")
    assert metric(after, "mnistops_feedback_total") - metric(before, "mnistops_feedback_total") == 41
    labeled = {i: rows[i] for i in rows}
    with contextlib.closing(sqlite3.connect(trained.work / "served.db")) as db:
        said = dict(db.execute("SELECT pid, label FROM predictions WHERE pid IS NOT NULL").fetchall())
    expected = np.mean([said[i] == label for i, label in labeled.items()])
    assert metric(after, "mnistops_live_accuracy") == pytest.approx(expected)
    assert replaced["live_accuracy"] == pytest.approx(expected) and replaced["labeled"] == len(labeled)
