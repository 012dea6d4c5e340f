"""What a request brings, made into MNIST-like images, or a :class:`BadInput` that says what was wrong.

* JSON: ``{"images": [...]}``, each image 28 rows of 28 integers 0..255, or 784 floats in [0, 1]
  (784 integers 0..255 and 28x28 floats in [0, 1] are taken too).
* Raw pixels (``Content-Type: application/octet-stream``): n x 784 bytes, each image's 28 rows
  of 28 bytes one after the other, as MNIST's own files hold them.
* An uploaded PNG or JPEG of any size and colour, made MNIST-like the standard way (as the
  dataset itself was made): grayscale; inverted when the background is light; cropped to the
  ink; scaled to fit 20x20 pixels keeping its aspect; pasted into 28x28 so that its centre of
  mass is at the centre. Pillow does the image work.

Every check raises :class:`BadInput` with the HTTP status to answer and a one-line ``detail``;
nothing here may raise anything else for any bytes a client sends.
"""

from __future__ import annotations

import collections
import io
import json
from typing import Any

import numpy as np

MAX_IMAGE_PIXELS = 16_000_000  # an uploaded image larger than this is refused before it is decoded
INK = 0.2  # a pixel is ink when it is brighter than this share of the brightest one (crop box)
NOISE = 0.1  # noise on the border fainter than this share of the brightest pixel is cut everywhere
# MNIST's centres of mass sit at row 14.0, column 14.0 (pixel indices; measured over the training set)
CENTRE = 14.0


class BadInput(ValueError):
    """A request the server refuses: ``status`` (4xx) and a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


MAX_JSON_DEPTH = 16  # {"images": [[[...]]]} nests 4 deep; Python's parser recurses once per level


def json_depth(body: bytes) -> int:
    """How deep the brackets of ``body`` nest (counted on the bytes, before any parsing; brackets
    inside strings count too, which only a body no client of ours sends could trip over)."""
    raw = np.frombuffer(body, np.uint8)
    steps = np.isin(raw, (ord("["), ord("{"))).astype(np.int32) - np.isin(raw, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def parse_json(body: bytes, expected: str) -> Any:
    """The JSON value of ``body``; ``expected`` (what to send instead) ends the messages.

    orjson parses it (a few times faster than the standard library). What orjson refuses is read
    again by the standard library, its nesting checked on the bytes first: it takes what JavaScript
    clients may send (``NaN``, ``Infinity``), which the image checks then name, and its messages
    say where the body went wrong."""
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise BadInput(422, f"the JSON nests {depth:,} levels deep; at most {MAX_JSON_DEPTH}: send {expected}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput(400, f"the body is not JSON ({exc}): send {expected}") from None


PIXELS = 28 * 28
RAW_LAYOUT = "n x 784 bytes, one byte (0..255) per pixel, each image's 28 rows one after the other"


def images_from_bytes(body: bytes, max_images: int) -> np.ndarray:
    """``uint8 (n, 28, 28)`` from a binary body (``Content-Type: application/octet-stream``):
    :data:`RAW_LAYOUT`. Nothing to parse: the bytes are the pixels."""
    if not body:
        raise BadInput(422, f"the body is empty: send {RAW_LAYOUT}")
    if len(body) % PIXELS:
        raise BadInput(422, f"the body is {len(body):,} bytes, not a multiple of 784: send {RAW_LAYOUT}")
    n = len(body) // PIXELS
    if n > max_images:
        raise BadInput(413, f"{n} images in one request; at most {max_images} (serve.max_batch)")
    return np.frombuffer(body, np.uint8).reshape(n, 28, 28)


def images_from_json(body: bytes, max_images: int) -> np.ndarray:
    """``uint8 (n, 28, 28)`` from a JSON body ``{"images": [...]}``."""
    data = parse_json(body, '{"images": [...]}')
    if not isinstance(data, dict) or "images" not in data:
        raise BadInput(422, 'expected a JSON object {"images": [...]}: a list of 28x28 or 784-pixel images')
    images = data["images"]
    if not isinstance(images, list):
        raise BadInput(422, f"images must be a list of images, not {type(images).__name__}")
    if not images:
        raise BadInput(422, "images is empty: send at least one image")
    if len(images) > max_images:
        raise BadInput(413, f"{len(images)} images in one request; at most {max_images} (serve.max_batch)")
    fast = _all_at_once(images)
    if fast is not None:
        return fast
    return np.stack([_one_image(image, i) for i, image in enumerate(images)])


def _all_at_once(images: list[Any]) -> np.ndarray | None:
    """The usual request, checked as one array: every image 28x28 integers 0..255 (or 784), or
    one image of floats in [0, 1]. None when anything is unusual: each image is then checked on its own, so
    that the refusal names the image and what is wrong with it."""
    try:
        arr = np.asarray(images)
    except ValueError:
        return None
    if arr.shape[1:] not in ((28, 28), (784,)):
        return None
    n = len(arr)
    if arr.dtype.kind in "iu":
        if arr.min() >= 0 and arr.max() <= 255:
            return arr.astype(np.uint8).reshape(n, 28, 28)
        return None
    # Floats only for one image: in a list, an image of integers beside images of floats would be
    # read as floats here (numpy makes one type of them), but as integers 0..255 on its own.
    if n == 1 and arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
        return np.rint(arr * 255).astype(np.uint8).reshape(n, 28, 28)
    return None


def _one_image(image: Any, i: int) -> np.ndarray:
    where = f"images[{i}]"
    shape_hint = "28 rows of 28 integers 0..255, or 784 floats in [0, 1]"
    if not isinstance(image, list):
        raise BadInput(422, f"{where} is a {type(image).__name__}; expected {shape_hint}")
    try:
        arr = np.asarray(image)
    except ValueError:  # ragged rows
        raise BadInput(422, f"{where} has rows of different lengths; expected {shape_hint}") from None
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        bad = next((v for v in np.ravel(arr).tolist() if not isinstance(v, int | float) or isinstance(v, bool)), None)
        raise BadInput(422, f"{where} holds {bad!r}, not a number; expected {shape_hint}")
    if arr.shape not in ((28, 28), (784,)):
        raise BadInput(422, f"{where} has shape {list(arr.shape)}; expected {shape_hint}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadInput(422, f"{where} holds NaN or infinity; expected {shape_hint}")
    is_integral = arr.dtype.kind in "iu" or bool(np.all(arr == np.round(arr)) and arr.max(initial=0) > 1)
    if is_integral:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise BadInput(422, f"{where} has pixel values {lo:g}..{hi:g}; integers must be 0..255")
        return arr.astype(np.uint8).reshape(28, 28)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        raise BadInput(422, f"{where} has pixel values {lo:g}..{hi:g}; floats must be in [0, 1]")
    return np.rint(arr * 255).astype(np.uint8).reshape(28, 28)


def image_from_upload(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """``uint8 (28, 28)``, MNIST-like, from the bytes of a PNG or JPEG file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadInput(422, "the upload is empty: send a PNG or JPEG image")
    image: Image.Image
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: nothing is decoded yet
    except UnidentifiedImageError:
        raise BadInput(415, "the upload is not an image Pillow can read: send a PNG or JPEG") from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, far above ours
        raise BadInput(413, f"the image is too large to decode ({exc}); at most {max_pixels:,} pixels") from None
    except Exception as exc:  # any other decoder complaint about crafted bytes
        raise BadInput(422, f"the upload could not be read as an image: {exc}") from None
    if image.format not in ("PNG", "JPEG"):
        raise BadInput(415, f"the upload is a {image.format} image; send a PNG or JPEG")
    width, height = image.size
    if width * height > max_pixels:
        raise BadInput(413, f"the image is {width}x{height} pixels; at most {max_pixels:,} pixels are decoded")
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels are background: lay the image on white before it loses its alpha.
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
            canvas.alpha_composite(image.convert("RGBA"))
            image = canvas
        gray = np.asarray(image.convert("L"), dtype=np.float64)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(422, f"the image could not be decoded: {exc}") from None
    return mnist_like(gray)


def mnist_like(gray: np.ndarray) -> np.ndarray:
    """``uint8 (28, 28)`` from a grayscale image ``float (h, w)``: ink white on black, fitted
    into 20x20, centred by mass in 28x28 (how MNIST's own images were made)."""
    from PIL import Image

    background = float(np.median(_border(gray)))
    if background > 127:  # dark ink on a light background: MNIST is light on dark
        gray, background = 255.0 - gray, 255.0 - background
    gray = np.clip(gray - background, 0, 255)  # a grey background (a photo of paper) becomes black
    peak = float(gray.max())
    if peak < 32:
        raise BadInput(422, "the image is blank: no ink stands out from the background")
    # Paper grain and sensor noise are not ink: whatever the frame's border holds is background.
    gray[gray <= min(float(np.percentile(_border(gray), 99)), NOISE * peak)] = 0
    rows, cols = np.nonzero(gray > INK * peak)
    glyph = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    glyph = glyph * (255.0 / peak)
    h, w = glyph.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(glyph.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), dtype=np.float64)
    out = np.zeros((28, 28))
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    out[top : top + size[1], left : left + size[0]] = small
    ys, xs = np.indices(out.shape)
    total = out.sum()
    dy = round(CENTRE - float((ys * out).sum() / total))
    dx = round(CENTRE - float((xs * out).sum() / total))
    return np.clip(np.rint(_shifted(out, dy, dx)), 0, 255).astype(np.uint8)


def _border(image: np.ndarray) -> np.ndarray:
    """The pixels of the frame's four edges."""
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def _shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels, what leaves the frame dropped, the rest black."""
    out = np.zeros_like(image)
    h, w = image.shape
    src = image[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


FEEDBACK_KEYS = {"prediction_id", "label", "replace"}


def feedback_from_json(body: bytes, max_items: int) -> list[tuple[str, int, bool]]:
    """``(prediction id, label, replace)`` per item of ``{"prediction_id": ..., "label": 0-9}``, or a
    list of such objects (``"replace": true`` to change a label already given)."""
    data = parse_json(body, '{"prediction_id": "...", "label": 7}')
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BadInput(422, "the list is empty: send at least one {prediction_id, label} object")
    if len(items) > max_items:
        raise BadInput(413, f"{len(items):,} labels in one request; at most {max_items:,} (serve.max_batch)")
    out = [_feedback_item(i, item) for i, item in enumerate(items)]
    twice = sorted(pid for pid, n in collections.Counter(pid for pid, _, _ in out).items() if n > 1)
    if twice:
        raise BadInput(422, f"prediction {twice[0]} is labeled twice in one request: send each once")
    return out


def _feedback_item(i: int, item: Any) -> tuple[str, int, bool]:
    where = f"item {i}: " if i else ""
    if not isinstance(item, dict):
        raise BadInput(422, f'{where}expected an object {{"prediction_id": "...", "label": 0-9}}')
    unknown = sorted(set(item) - FEEDBACK_KEYS)
    if unknown:
        raise BadInput(422, f"{where}unknown field {unknown[0]!r}: give prediction_id, label and optionally replace")
    pid, label, replace = item.get("prediction_id"), item.get("label"), item.get("replace", False)
    if not isinstance(pid, str) or not 0 < len(pid) <= 64:
        raise BadInput(422, f"{where}prediction_id must be the id string /predict answered with")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise BadInput(422, f"{where}label must be an integer from 0 to 9, not {json.dumps(label)}")
    if not isinstance(replace, bool):
        raise BadInput(422, f"{where}replace must be true or false")
    return pid, label, replace
