"""Opening images with Pillow, with every check and conversion in one place: EXIF rotation,
16-bit and float images, palettes, decompression bombs. No TensorFlow here (the overlay
command renders without it)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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
