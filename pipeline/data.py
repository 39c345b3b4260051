"""tf.data: manifest paths -> decoded, resized batches (+ row ids, overlay bases, load errors)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DataConfig
from pipeline.faults import checkpoint

Image.MAX_IMAGE_PIXELS = None  # we refuse oversized images ourselves, before decoding


class LoadError(Exception):
    """An image that cannot be used; the message becomes the row's `error`."""


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float grayscale -> 8-bit 'L' by scaling, not clipping.

    16-bit modes map the full 0..65535 range to 0..255 (so 12-bit data stored as 16 bits looks
    dark, as it does in any viewer); 32-bit integers are treated as 16-bit when they exceed 255;
    floats are scaled by their maximum when it exceeds 1, else taken as 0..1.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / (top if top > 1.0 else 1.0)
    elif im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / 65535.0 if arr.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(arr.astype(np.float64) * scale, 0, 255).astype(np.uint8), "L")


def open_image(
    path: str, mode: str, max_pixels: int, draft_side: int = 0
) -> tuple[Image.Image, tuple[int, int]]:
    """Open, check and decode one image as `mode` ('RGB' or 'L'), EXIF rotation applied.

    Returns the image and the original (height, width) as displayed. Raises LoadError with a
    message naming the cause.
    """
    if not path:
        raise LoadError("empty path in manifest")
    if not os.path.exists(path):
        raise LoadError(f"file not found: {path}")
    if os.path.isdir(path):
        raise LoadError(f"is a directory, not an image: {path}")
    if os.path.getsize(path) == 0:
        raise LoadError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise LoadError(
                    f"image is {width}x{height} = {width * height} pixels, over "
                    f"data.max_pixels={max_pixels}; refused before decoding"
                )
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            if draft_side and im.format == "JPEG":  # let libjpeg decode at a reduced scale
                im.draft(mode, (draft_side, draft_side))
            im.seek(0)  # first frame / page of animated or multi-page files
            im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                im = _to_8bit(im)
            elif im.mode == "P":
                im = im.convert("RGBA")
            if im.mode != mode:
                im = im.convert(mode)
            return im, (height, width)
    except LoadError:
        raise
    except UnidentifiedImageError:
        raise LoadError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower():
            raise LoadError(f"truncated or corrupt image ({message})") from None
        raise LoadError(f"cannot decode image: {message}") from None
    except Exception as exc:  # anything PIL may raise for a hostile file
        raise LoadError(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def fit_side(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the longest side is at most max_side."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def load_example(
    path: str, size: tuple[int, int], channels: int, base_side: int, max_pixels: int
) -> tuple[np.ndarray, Image.Image | None, np.ndarray, bool, bytes]:
    """One row: (image (H,W,C) uint8, overlay base RGB with longest side <= base_side (None
    when base_side is 0 or the row fails), orig_hw (2,) int32, ok, error)."""
    checkpoint("decode")
    h, w = size
    image = np.zeros((h, w, channels), np.uint8)
    orig_hw = np.zeros(2, np.int32)
    try:
        mode = "L" if channels == 1 else "RGB"
        im, (oh, ow) = open_image(path, "RGB", max_pixels, draft_side=max(h, w, base_side))
        orig_hw[:] = (oh, ow)
        model_im = im.convert(mode) if mode != "RGB" else im
        image[:] = np.asarray(model_im.resize((w, h), Image.BILINEAR)).reshape(h, w, channels)
        base = None
        if base_side:
            fitted = fit_side(im.size, base_side)
            base = im if fitted == im.size else im.resize(fitted, Image.BILINEAR)
        return image, base, orig_hw, True, b""
    except LoadError as exc:
        return image, None, orig_hw, False, str(exc).encode("utf-8")


class Bases:
    """Overlay bases handed from the loader to the writers beside tf.data, keyed by row.

    Each base keeps its own size and stays a Pillow image: no padded canvas, no copies
    through tensors. The loader puts, the consumer pops; a dict is safe across threads.
    """

    def __init__(self) -> None:
        self._images: dict[int, Image.Image] = {}

    def put(self, row: int, image: Image.Image) -> None:
        self._images[row] = image

    def pop(self, row: int) -> Image.Image | None:
        return self._images.pop(row, None)

    def __len__(self) -> int:
        return len(self._images)


def make_dataset(
    paths: Sequence[str],
    rows: Sequence[int] | None,
    shape: tuple[int, int, int],
    batch_size: int,
    data: DataConfig,
    base_side: int = 0,
    bases: Bases | None = None,
) -> tf.data.Dataset:
    """Batches of `rows` (default: all), in order: dict(row, image, orig_hw, ok, error); `row`
    indexes `paths`, `image` is (B,H,W,C) uint8 for shape = (H,W,C). With base_side > 0, each
    good row's overlay base goes into `bases`.

    Decoding runs in data.num_parallel_calls threads (PIL releases the GIL while decoding),
    data.prefetch batches ahead; images over data.max_pixels are refused. A row that cannot be
    read keeps its place in the batch with ok=False and a specific error.
    """
    h, w, channels = shape
    paths = list(paths)
    if base_side and bases is None:
        raise ValueError("base_side > 0 needs a Bases store to put the overlay bases in")

    def load(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
        image, base, orig_hw, ok, error = load_example(
            paths[int(row)], (h, w), channels, base_side, data.max_pixels
        )
        if base is not None:
            bases.put(int(row), base)
        return image, orig_hw, ok, error

    def load_tf(row: tf.Tensor) -> dict[str, tf.Tensor]:
        image, orig_hw, ok, error = tf.numpy_function(
            load, [row], [tf.uint8, tf.int32, tf.bool, tf.string], stateful=True
        )
        image.set_shape((h, w, channels))
        orig_hw.set_shape((2,))
        ok.set_shape(())
        error.set_shape(())
        return {"row": row, "image": image, "orig_hw": orig_hw, "ok": ok, "error": error}

    parallel, prefetch = data.num_parallel_calls, data.prefetch
    calls = tf.data.AUTOTUNE if parallel is None or parallel < 1 else parallel
    todo = np.arange(len(paths)) if rows is None else np.asarray(rows, np.int64)
    ds = tf.data.Dataset.from_tensor_slices(todo.astype(np.int64))
    ds = ds.map(load_tf, num_parallel_calls=calls, deterministic=True)
    ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
