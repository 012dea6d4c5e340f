"""The draw-a-digit page in a real browser: Debian's Chromium, headless, driven by Playwright
(never a browser Playwright downloads), against a real server on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnistops.data.dataset import Dataset
from mnistops.serve import launch
from support import CLOSED_MIRROR

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCALE = 10  # canvas pixels per MNIST pixel (a 280x280 pad)

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run does)"),
    pytest.mark.xdist_group("serve_page"),  # one server and one browser for the module
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's folder: its store, and its prediction log ``page.db``."""
    return tmp_path_factory.mktemp("page")


@pytest.fixture(scope="module")
def server(work: Path, session_cache: Path) -> Iterator[launch.Server]:
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MNISTOPS_CACHE_DIR": str(session_cache),
        "MNISTOPS_MIRRORS": CLOSED_MIRROR,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    train = [
        sys.executable,
        "-m",
        "mnistops",
        "train",
        "--promote",
        "--set",
        "model.params.n_estimators=40",
        "--set",
        "model.params.max_depth=18",
    ]
    proc = subprocess.run(
        train, cwd=work, env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = launch.start(["--set", "serve.prediction_log=page.db"], env=env, cwd=work)
    launch.wait_ready(s)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def strokes(image: np.ndarray, threshold: int = 100) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The image's ink as pen strokes on the pad: one horizontal stroke per run of inked pixels in
    each row (the pen, 18 canvas pixels wide, joins neighbouring rows)."""
    out = []
    for row in range(28):
        ink = np.flatnonzero(image[row] > threshold)
        if not len(ink):
            continue
        runs = np.split(ink, np.flatnonzero(np.diff(ink) > 1) + 1)
        for run in runs:
            y = (row + 0.5) * SCALE
            out.append((((run[0] + 0.5) * SCALE, y), ((run[-1] + 0.5) * SCALE, y)))
    return out


def shown(page: Any) -> dict[str, Any]:
    """What the page shows: the digit, the model line, and each class's bar width (percent)."""
    bars = page.eval_on_selector_all(
        "#bars .bar", "rows => rows.map(r => parseFloat(r.querySelector('.fill').style.width))"
    )
    return {
        "digit": page.inner_text("#digit"),
        "model": page.inner_text("#model"),
        "bars": bars,
        "top": page.eval_on_selector_all("#bars .bar.top", "rows => rows.map(r => Number(r.dataset.label))"),
        "error": page.inner_text("#error"),
    }


def canvas_png(page: Any) -> bytes:
    url = page.eval_on_selector("#pad", "c => c.toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def test_drawing_a_real_digit_shows_what_the_api_says(
    server: launch.Server, browser: Any, mnist: Dataset, tmp_path: Path
) -> None:
    index = int(np.flatnonzero(mnist.labels == 7)[-1])  # a real test-set 7, drawn stroke by stroke
    image = mnist.images[index]
    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server.url + "/")
        assert shown(page)["digit"] == "?"
        box = page.locator("#pad").bounding_box()
        lines = strokes(image)
        assert len(lines) > 10
        for i, ((x0, y0), (x1, y1)) in enumerate(lines):
            page.mouse.move(box["x"] + x0, box["y"] + y0)
            page.mouse.down()
            page.mouse.move(box["x"] + x1, box["y"] + y1, steps=3)
            if i == len(lines) - 1:
                with page.expect_response(lambda r: r.url.endswith("/predict/image")) as last:
                    page.mouse.up()
                assert last.value.ok
            else:
                page.mouse.up()
        page.wait_for_function("document.getElementById('digit').textContent !== '?'")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "drawn-7.png"))
        on_page = shown(page)
        png = canvas_png(page)
    finally:
        page.close()

    api = server.post("/predict/image", png, "image/png")
    answer = api["predictions"][0]
    assert on_page["error"] == ""
    assert on_page["digit"] == str(answer["label"]) == "7"
    assert on_page["top"] == [answer["label"]]
    np.testing.assert_allclose(on_page["bars"], [100 * p for p in answer["probabilities"]], atol=0.051)
    assert on_page["model"] == f"model mnist-classifier version {api['model']['version']}"
    assert (tmp_path / "drawn-7.png").stat().st_size > 5000
    # What the model saw is the drawing made MNIST-like: close to the image the strokes came from.
    seen = np.asarray(api["input"], float).ravel()
    assert np.corrcoef(seen, image.ravel().astype(float))[0, 1] > 0.7
    assert all(url.startswith(server.url) for url in requests), requests  # nothing from anywhere else


def test_a_finger_draws_a_one_and_clear_starts_again(server: launch.Server, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(has_touch=True, viewport={"width": 500, "height": 700}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        box = page.locator("#pad").bounding_box()
        cdp = context.new_cdp_session(page)
        x = box["x"] + 140

        def touch(kind: str, y: float) -> None:
            points = [] if kind == "touchEnd" else [{"x": x, "y": box["y"] + y}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

        with page.expect_response(lambda r: r.url.endswith("/predict/image")) as answered:
            touch("touchStart", 40)
            for y in range(50, 250, 10):
                touch("touchMove", y)
            touch("touchEnd", 240)
        body = json.loads(answered.value.body())
        page.wait_for_function("document.getElementById('digit').textContent !== '?'")
        page.screenshot(path=str(tmp_path / "touched-1.png"))
        assert page.inner_text("#digit") == str(body["predictions"][0]["label"]) == "1"
        page.click("#clear")
        assert page.inner_text("#digit") == "?"
        blank = page.eval_on_selector(
            "#pad", "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every(v => v === 255)"
        )
        assert blank
    finally:
        context.close()


def draw(page: Any, image: np.ndarray) -> dict[str, Any]:
    """Draw ``image`` on the pad stroke by stroke; the server's answer to the drawing."""
    box = page.locator("#pad").bounding_box()
    lines = strokes(image)
    for i, ((x0, y0), (x1, y1)) in enumerate(lines):
        page.mouse.move(box["x"] + x0, box["y"] + y0)
        page.mouse.down()
        page.mouse.move(box["x"] + x1, box["y"] + y1, steps=3)
        if i < len(lines) - 1:
            page.mouse.up()
            continue
        with page.expect_response(lambda r: r.url.endswith("/predict/image")) as last:
            page.mouse.up()
    page.wait_for_function("document.getElementById('digit').textContent !== '?'")
    return json.loads(last.value.body())  # type: ignore[no-any-return]


def test_a_label_button_sends_the_true_label_back(
    server: launch.Server, browser: Any, mnist: Dataset, work: Path, tmp_path: Path
) -> None:
    import sqlite3

    image = mnist.images[int(np.flatnonzero(mnist.labels == 3)[-1])]  # a real test-set 3
    page = browser.new_page(viewport={"width": 900, "height": 800})
    try:
        page.goto(server.url + "/")
        assert not page.is_visible("#feedback")  # nothing to label before an answer
        answer = draw(page, image)["predictions"][0]
        assert page.is_visible("#feedback")
        assert page.eval_on_selector_all("#labels button", "bs => bs.map(b => b.textContent)") == list("0123456789")
        with page.expect_response(lambda r: r.url.endswith("/feedback")) as sent:
            page.click('#labels button[data-label="3"]')
        assert sent.value.status == 200
        page.wait_for_function("document.getElementById('thanks').textContent.includes('recorded as a 3')")
        assert page.eval_on_selector_all("#labels button.given", "bs => bs.map(b => b.dataset.label)") == ["3"]
        with contextlib.closing(sqlite3.connect(work / "page.db")) as db:
            first = db.execute("SELECT label FROM feedback WHERE pid = ?", (answer["prediction_id"],)).fetchall()
        # A second press changes the label (the page says replace); the row is replaced, not added.
        with page.expect_response(lambda r: r.url.endswith("/feedback")) as resent:
            page.click('#labels button[data-label="8"]')
        assert resent.value.status == 200
        page.wait_for_function("document.getElementById('thanks').textContent.includes('recorded as an 8')")
        page.screenshot(path=str(tmp_path / "labeled.png"))
        page.click("#clear")
        assert not page.is_visible("#feedback")
    finally:
        page.close()
    with contextlib.closing(sqlite3.connect(work / "page.db")) as db:
        rows = db.execute("SELECT pid, label FROM feedback").fetchall()
    assert first == [(3,)]
    assert rows == [(answer["prediction_id"], 8)]
