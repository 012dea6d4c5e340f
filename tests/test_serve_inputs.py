"""What a request brings, made MNIST-like (mnistops.serve.inputs), the serving config, and the
prediction log: no server, no model."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from mnistops.config import Config, dump_yaml, load_config
from mnistops.data.dataset import Dataset
from mnistops.errors import ConfigError
from mnistops.serve.inputs import BadInput, image_from_upload, images_from_json, mnist_like
from mnistops.tracking.predlog import PredictionLog, read


def encode(array: np.ndarray, fmt: str = "PNG", mode: str = "L") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format=fmt)
    return out.getvalue()


def test_json_images_in_every_accepted_form_give_the_same_pixels(mnist: Dataset) -> None:
    images = mnist.images[:3]
    forms = [
        images.tolist(),  # 28x28 integers
        images.reshape(3, 784).tolist(),  # 784 integers
        (images / 255).reshape(3, 784).tolist(),  # 784 floats in [0, 1]
        (images / 255).tolist(),  # 28x28 floats
    ]
    for form in forms:
        got = images_from_json(json.dumps({"images": form}).encode(), 256)
        assert got.dtype == np.uint8 and got.shape == (3, 28, 28)
        np.testing.assert_array_equal(got, images)


def test_integral_floats_above_one_are_read_as_0_to_255() -> None:
    body = json.dumps({"images": [[float(v) for v in range(784)] and [255.0] * 784]}).encode()
    assert images_from_json(body, 1).max() == 255
    one = json.dumps({"images": [[1.0] * 784]}).encode()  # all ones: floats in [0, 1], so white
    assert images_from_json(one, 1).max() == 255


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"images": [[[0] * 28] * 28, True]}, 422, "images[1] is a bool"),
        ({"images": [[[True] * 28] * 28]}, 422, "images[0] holds True, not a number"),
        ({"images": [[[None] * 28] * 28]}, 422, "images[0] holds None, not a number"),
        ({"images": [[[0.5] * 28] * 28] * 3}, 413, "3 images in one request; at most 2"),
        ({"images": [[[[0] * 28] * 28]]}, 422, "images[0] has shape [1, 28, 28]"),
    ],
)
def test_json_refusals(body: object, status: int, detail: str) -> None:
    with pytest.raises(BadInput) as err:
        images_from_json(json.dumps(body).encode(), 2)
    assert err.value.status == status
    assert detail in err.value.detail


def test_a_test_image_photographed_large_comes_back_as_itself(mnist: Dataset) -> None:
    """Scaled up 10x, inverted to dark on light, on a grey background, off centre, as a JPEG: the
    standard preparation gives back an image close to the original (and an MNIST image itself
    comes back as it is)."""
    from PIL import Image

    close, same = [], []
    for image in mnist.images[-30:]:
        big = np.asarray(Image.fromarray(image).resize((280, 280), Image.Resampling.BICUBIC), float)
        page = np.full((500, 400), 220.0)
        page[30:310, 90:370] = 220 - np.clip(big, 0, 255) * (200 / 255)
        got = image_from_upload(encode(page.astype(np.uint8), "JPEG", "RGB"))
        assert got.shape == (28, 28) and got.dtype == np.uint8
        close.append(np.corrcoef(got.ravel().astype(float), image.ravel().astype(float))[0, 1])
        same.append(np.corrcoef(mnist_like(image.astype(float)).ravel(), image.ravel())[0, 1])
    assert np.median(close) > 0.95 and min(close) > 0.7
    assert min(same) > 0.99


def test_mnist_like_fits_20x20_centred_by_mass() -> None:
    tall = np.zeros((400, 100))
    tall[:, 40:60] = 255  # a tall bar: the long side becomes 20 pixels
    out = mnist_like(tall).astype(float)
    rows, _ = np.nonzero(out > 50)
    assert rows.max() - rows.min() + 1 in (19, 20, 21)
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 13.5) <= 0.75
    assert abs((xs * out).sum() / out.sum() - 13.5) <= 0.75


def test_transparent_png_strokes_are_ink() -> None:
    """A drawing on a transparent background (how many apps export) is ink on white."""
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[10:90, 45:55] = (0, 0, 0, 255)  # black strokes, the rest fully transparent
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    got = image_from_upload(out.getvalue())
    assert got.max() == 255 and got[0, 0] == 0 and got[:, 13:15].sum() > 0


def test_serve_settings_do_not_change_what_a_run_is() -> None:
    base = Config()
    served = load_config(None, ["serve.port=9000", "serve.admin_token=secret", "serve.workers=2"])
    assert served.hash() == base.hash()
    assert "secret" not in dump_yaml(served)
    assert "serve" not in dump_yaml(served) and dump_yaml(served) == dump_yaml(base)
    with pytest.raises(ConfigError, match=r"serve\.port"):
        load_config(None, ["serve.port=70000"])
    with pytest.raises(ConfigError, match=r"serve\.max_batch"):
        load_config(None, ["serve.max_batch=0"])


def test_prediction_log_writes_everything_queued_and_keeps_what_retention_allows(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db", max_rows=150, max_age_s=3600)
    images = np.arange(100 * 784, dtype=np.uint32).reshape(100, 28, 28).astype(np.uint8)
    proba = np.eye(10)[np.arange(100) % 10] * 0.9 + 0.01
    for _ in range(3):
        log.add("m", "7", images, proba, "/predict")
    log.close()  # drains the queue first
    got = read(tmp_path / "p.db")
    assert len(got["label"]) == 150  # the newest 150 of 300
    np.testing.assert_array_equal(got["images"], np.concatenate([images[50:], images]))
    assert got["label"].tolist() == [i % 10 for i in range(50, 100)] + [i % 10 for i in range(100)]
    assert set(got["version"].tolist()) == {"7"}
    np.testing.assert_allclose(got["confidence"], 0.91)

    old = PredictionLog(tmp_path / "p.db", max_rows=1000, max_age_s=60)
    with sqlite3.connect(tmp_path / "p.db") as db:
        db.execute("UPDATE predictions SET ts = ?", (time.time() - 120,))  # two minutes ago
    old.add("m", "8", images[:5], proba[:5], "/predict/image")
    old.close()
    kept = read(tmp_path / "p.db")
    assert kept["version"].tolist() == ["8"] * 5  # rows older than a minute are gone


def test_prediction_log_in_a_missing_folder_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        PredictionLog(tmp_path / "nope" / "p.db")
    assert not (tmp_path / "nope").exists()


def test_an_image_of_integers_beside_images_of_floats_is_read_as_integers() -> None:
    ones = [[1] * 784]  # integers: 1 of 255, nearly black
    floats = [[1.0] * 784]  # floats in [0, 1]: white
    got = images_from_json(json.dumps({"images": ones + floats}).encode(), 4)
    assert got[0].max() == 1 and got[1].min() == 255
    assert images_from_json(json.dumps({"images": floats}).encode(), 4).min() == 255
    assert images_from_json(json.dumps({"images": ones}).encode(), 4).max() == 1


@pytest.mark.parametrize("preprocess", [False, True])
def test_forest_proba_is_the_forests_own_predict_proba_bit_for_bit(mnist: Dataset, preprocess: bool) -> None:
    from types import SimpleNamespace

    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mnistops.lifecycle.versions import _forest_of, forest_proba

    x = mnist.images[:3000].reshape(3000, 784).astype(np.float32) / 255
    y = mnist.labels[:3000]
    for forest in (
        RandomForestClassifier(20, max_depth=10, random_state=0, n_jobs=2),
        ExtraTreesClassifier(20, max_depth=10, random_state=0),
    ):
        model = make_pipeline(StandardScaler(), forest) if preprocess else forest
        model.fit(x[:2000], y[:2000])
        forest.n_jobs = 1  # sklearn's own order of adding (with threads, the order varies)
        found = _forest_of(SimpleNamespace(model=model))
        assert found is not None
        for n in (1, 8, 1000):
            np.testing.assert_array_equal(
                forest_proba(found, x[2000 : 2000 + n]), model.predict_proba(x[2000 : 2000 + n])
            )
    assert _forest_of(SimpleNamespace(model=make_pipeline(StandardScaler()))) is None
