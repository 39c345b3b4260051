"""tf.data: manifest paths -> decoded, resized batches (+ row ids, overlay bases, load errors).

Two routes give the same pixels. The fast route decodes plain JPEG/PNG/BMP/GIF files with
TensorFlow's own decoders inside the graph and resizes them with `pil_bilinear`, a graph copy of
Pillow's BILINEAR resample; only a header sniff (a few hundred bytes parsed in Python) runs per
image. Everything else, and every file the sniff is not sure of, takes the Pillow route
(`load_example`), which also makes every error row. Measured: the JPEG decode is bit-identical
to Pillow's with dct_method="INTEGER_ACCURATE" (TF's default INTEGER_FAST differs by up to 5
levels in two thirds of the pixels), PNG/BMP/GIF are bit-identical, and so is the resize.
The fast route is off (FAST_ROUTE): the exact resize makes it slower than Pillow on a CPU.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np
import PIL
import tensorflow as tf
from PIL import Image

from pipeline.config import DataConfig
from pipeline.faults import checkpoint
from pipeline.images import LoadError, fit_side, open_image

Image.MAX_IMAGE_PIXELS = None  # we refuse oversized images ourselves, before decoding


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


# Routes: what the sniff hands the graph. JPEG routes carry libjpeg's scale (Pillow's draft).
PILLOW, JPEG_1, JPEG_2, JPEG_4, JPEG_8, PNG, BMP, GIF = range(8)
JPEG_RATIOS = {1: JPEG_1, 2: JPEG_2, 4: JPEG_4, 8: JPEG_8}
HEAD_BYTES = 65536  # a JPEG header (Exif included) longer than this takes the Pillow route
FAST_MAX_PIXELS = 1 << 22  # decoded pixels; larger images take Pillow's leaner resize
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (libImaging/Resample.c)
# Off: correct and tested, but slower than Pillow on a 2-core CPU (make_dataset, 512 JPEGs
# 500x375: ~160 images/s on the Pillow route, ~25-50 with the fast route), because the exact
# graph resize costs more than TF's decode saves (TF decode + tf.image.resize: ~360/s).
FAST_ROUTE = False
routes_taken: Counter[str] = Counter()  # "fast" / "pillow" rows since import (tests read it)
_routes_lock = threading.Lock()


def _count(route: str) -> None:
    with _routes_lock:
        routes_taken[route] += 1


def _be(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "big")


def _le(data: bytes, at: int, size: int) -> int:
    return int.from_bytes(data[at : at + size], "little")


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of an Exif block's IFD0 (1 when absent); 0 when unsure."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 0
    read = _le if tiff[:2] == b"II" else _be
    ifd = read(tiff, 4, 4)
    if read(tiff, 2, 2) != 42 or ifd + 2 > len(tiff):
        return 0
    for entry in range(ifd + 2, ifd + 2 + 12 * read(tiff, ifd, 2), 12):
        if entry + 12 > len(tiff):
            return 0
        if read(tiff, entry, 2) == 0x0112:
            plain = read(tiff, entry + 2, 2) == 3 and read(tiff, entry + 4, 4) == 1
            return read(tiff, entry + 8, 2) if plain else 0
    return 1


def _jpeg_segment_ok(marker: int, seg: bytes, exif_seen: bool) -> bool:
    """A header segment that leaves the decoded pixels as libjpeg alone makes them."""
    if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
        return False  # lossless, hierarchical or arithmetic-coded
    if marker == 0xE1 and seg.startswith(b"Exif\0\0"):
        return not exif_seen and exif_orientation(seg[6:]) == 1
    if marker == 0xE1:
        return b"tiff:Orientation" not in seg  # Pillow reads an XMP orientation too
    if marker == 0xE2:
        return not seg.startswith(b"MPF\0")  # Pillow opens these as MPO: no draft
    return marker not in (0x01, 0xD8, 0xD9) and not 0xD0 <= marker <= 0xD7


def jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) of a plain 8-bit baseline/progressive JPEG with 1 or 3 components, EXIF
    orientation 1, no XMP orientation, not multi-picture; None for anything else."""
    pos, exif_seen, size = 2, False, None
    while pos + 4 <= len(head) and head[pos] == 0xFF:
        marker, length = head[pos + 1], _be(head, pos + 2, 2)
        if marker == 0xFF:
            pos += 1  # fill byte
            continue
        seg = head[pos + 4 : pos + 2 + length]
        if marker == 0xDA:
            return size
        if (
            length < 2
            or pos + 2 + length > len(head)
            or not _jpeg_segment_ok(marker, seg, exif_seen)
        ):
            return None
        exif_seen = exif_seen or (marker == 0xE1 and seg.startswith(b"Exif\0\0"))
        if marker in (0xC0, 0xC1, 0xC2):
            if size or len(seg) < 6 or seg[0] != 8 or seg[5] not in (1, 3):
                return None
            size = (_be(seg, 1, 2), _be(seg, 3, 2))
            if not all(size):
                return None
        pos += 2 + length
    return None


def png_size(f, head: bytes, nbytes: int) -> tuple[int, int] | None:
    """(height, width) of a whole, still, 8-bit PNG (palette of any depth) without an EXIF or
    XMP block that could rotate it; None for anything else. Walks the chunk headers only."""
    depth, kind = head[24:25], head[25:26]
    plain = (depth == b"\x08" and kind in (b"\0", b"\2", b"\4", b"\6")) or kind == b"\3"
    if len(head) < 33 or head[12:16] != b"IHDR" or not plain:
        return None
    pos = 8
    while pos + 12 <= nbytes:
        f.seek(pos)
        chunk = f.read(8 + 24)
        name, text = chunk[4:8], chunk[8:]
        if name in (b"acTL", b"eXIf") or (
            name in (b"tEXt", b"zTXt", b"iTXt")
            and text.startswith((b"Raw profile type exif", b"XML:com.adobe.xmp"))
        ):
            return None
        pos += 12 + _be(chunk, 0, 4)
        if name == b"IEND":
            return (_be(head, 20, 4), _be(head, 16, 4)) if pos <= nbytes else None
    return None


def bmp_size(head: bytes, nbytes: int) -> tuple[int, int] | None:
    """(height, width) of a whole, uncompressed, bottom-up 24-bit BMP; None otherwise."""
    if len(head) < 54 or _le(head, 14, 4) not in (40, 108, 124):
        return None
    width, height = _le(head, 18, 4), _le(head, 22, 4)  # a top-down BMP has height >= 2**31
    plain = _le(head, 26, 2) == 1 and _le(head, 28, 2) == 24 and _le(head, 30, 4) == 0
    stride = (width * 24 + 31) // 32 * 4
    if not plain or not 0 < width < 1 << 31 or not 0 < height < 1 << 31:
        return None
    return (height, width) if _le(head, 10, 4) + stride * height <= nbytes else None


def _gif_blocks(data: bytes, pos: int) -> int:
    """Position after a run of GIF data sub-blocks (len(data) + 1 when cut short)."""
    while pos < len(data) and data[pos]:
        pos += data[pos] + 1
    return pos + 1


def gif_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a whole one-frame GIF whose frame fills the screen, without
    transparency; None otherwise (animations, odd frames: Pillow)."""
    width, height, flags = _le(data, 6, 2), _le(data, 8, 2), data[10:11]
    pos, frames = 13 + (3 << (flags[0] & 7) + 1 if flags and flags[0] & 0x80 else 0), 0
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:
            return (height, width) if frames == 1 and width and height else None
        if block == 0x21:
            control = data[pos + 1 : pos + 4]
            if control[:1] == b"\xf9" and len(control) == 3 and control[2] & 1:
                return None  # a transparent colour
            pos = _gif_blocks(data, pos + 2)
        elif block == 0x2C and frames == 0 and len(data) > pos + 10:
            frames, desc = 1, data[pos + 1 : pos + 10]
            if desc[:8] != bytes(4) + data[6:10]:
                return None  # an offset or smaller frame
            pos = _gif_blocks(data, pos + 11 + (3 << (desc[8] & 7) + 1 if desc[8] & 0x80 else 0))
        else:
            return None
    return None


def sniff(path: str, max_pixels: int, side: int) -> tuple[int, int, int]:
    """(route, height, width): which decoder this file is safe and pixel-identical with.
    Reads the header only (GIFs whole); any doubt, and any error, means PILLOW."""
    try:
        with open(path, "rb") as f:
            head, nbytes = f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size
            route, size = PILLOW, None
            if head[:3] == b"\xff\xd8\xff":
                f.seek(max(nbytes - 2, 0))
                size = jpeg_size(head) if f.read(2) == b"\xff\xd9" else None
                scale = min(size[1] // side, size[0] // side) if size else 0
                route = next((JPEG_RATIOS[r] for r in (8, 4, 2, 1) if scale >= r), JPEG_1)
            elif head[:8] == b"\x89PNG\r\n\x1a\n":
                route, size = PNG, png_size(f, head, nbytes)
            elif head[:2] == b"BM":
                route, size = BMP, bmp_size(head, nbytes)
            elif head[:6] in (b"GIF87a", b"GIF89a") and nbytes <= 1 << 24:
                route, size = GIF, gif_size(head + f.read())
    except OSError:
        return PILLOW, 0, 0
    if size is None or size[0] * size[1] > max_pixels:  # Pillow makes the error row
        return PILLOW, 0, 0
    ratio = 1 << max(route - JPEG_1, 0) if route <= JPEG_8 else 1
    if -(-size[0] // ratio) * -(-size[1] // ratio) > FAST_MAX_PIXELS:
        return PILLOW, 0, 0
    return route, size[0], size[1]


def _taps(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's BILINEAR coefficients for in_size -> out_size: source index (out,K) int32 and
    22-bit fixed-point weight (out,K) int32, from the same doubles as precompute_coeffs."""
    scale = tf.cast(in_size, tf.float64) / float(out_size)
    support = tf.maximum(scale, 1.0)  # filterscale times the filter's support of 1
    center = (tf.range(out_size, dtype=tf.float64) + 0.5) * scale  # (out,)
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)  # C casts truncate
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    k = tf.range(tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1)  # (K,)
    src = first[:, None] + k[None, :]  # (out,K)
    arg = (tf.cast(src, tf.float64) - center[:, None] + 0.5) * (1.0 / support)
    weight = tf.where(k[None, :] < count[:, None], tf.maximum(1.0 - tf.abs(arg), 0.0), 0.0)
    total = tf.math.cumsum(weight, axis=1)[:, -1:]  # summed in order, as the C loop does
    weight = tf.where(total != 0.0, weight / total, weight)
    fixed = tf.cast(0.5 + weight * float(1 << PRECISION_BITS), tf.int32)  # weights are >= 0
    return tf.minimum(src, in_size - 1), fixed


def _resample_rows(image: tf.Tensor, out_size: int) -> tf.Tensor:
    """(H,W,C) uint8 -> (out_size,W,C) uint8 along axis 0, rounded and clipped as Pillow does.
    Gathers whole rows (axis 0): a gather along another axis copies C values at a time."""
    src, fixed = _taps(tf.shape(image)[0], out_size)  # (out,K)
    taps = tf.gather(tf.cast(image, tf.int32), src)  # (out,K,W,C)
    total = tf.reduce_sum(taps * fixed[:, :, None, None], axis=1) + (1 << (PRECISION_BITS - 1))
    return tf.cast(
        tf.clip_by_value(tf.bitwise.right_shift(total, PRECISION_BITS), 0, 255), tf.uint8
    )


PILLOW_VERTICAL_FIRST = int(PIL.__version__.split(".")[0]) >= 13  # see pil_bilinear


def pil_bilinear(image: tf.Tensor, out_h: int, out_w: int) -> tf.Tensor:
    """(H,W,C) uint8 -> (out_h,out_w,C) uint8, pixel-identical to the installed Pillow's
    Image.resize((out_w, out_h), BILINEAR) (10 and 13 checked): same passes, order, rounding."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]

    def rows(x: tf.Tensor) -> tf.Tensor:
        return tf.cond(h != out_h, lambda: _resample_rows(x, out_h), lambda: x)

    def cols(x: tf.Tensor) -> tf.Tensor:  # (H,W,C) -> (W,H,C), rows, and back
        flip = (1, 0, 2)
        return tf.cond(
            w != out_w,
            lambda: tf.transpose(_resample_rows(tf.transpose(x, flip), out_w), flip),
            lambda: x,
        )

    # Pillow 13 runs the vertical pass first when the height shrinks more than twice the width;
    # Pillow 10 always runs the horizontal pass first (tests/test_decode.py checks either)
    vertical_first = (h - out_h > 0) & (h - out_h > (w - out_w) * 2) & PILLOW_VERTICAL_FIRST
    out = tf.cond(vertical_first, lambda: cols(rows(image)), lambda: rows(cols(image)))
    return tf.ensure_shape(out, (out_h, out_w, image.shape[-1]))


def pil_luma(image: tf.Tensor) -> tf.Tensor:
    """(H,W,3) uint8 -> (H,W,1) uint8 as Pillow's convert('L') (ITU-R 601-2, 16-bit fixed)."""
    rgb = tf.cast(image, tf.int32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return tf.cast(tf.bitwise.right_shift(luma, 16), tf.uint8)[..., None]


def decode_fast(data: tf.Tensor, route: tf.Tensor) -> tf.Tensor:
    """(H,W,3) uint8 from TF's own decoders; `route` is one of JPEG_1..GIF."""

    def jpeg(ratio: int):
        return lambda: tf.io.decode_jpeg(
            data, 3, ratio=ratio, dct_method="INTEGER_ACCURATE", try_recover_truncated=False
        )

    branches = [jpeg(r) for r in (1, 2, 4, 8)] + [
        lambda: tf.io.decode_png(data, 3),
        lambda: tf.io.decode_bmp(data, 3),
        lambda: tf.io.decode_gif(data)[0],
    ]
    return tf.ensure_shape(tf.switch_case(route - JPEG_1, branches), (None, None, 3))


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

    With FAST_ROUTE (off: see there), each row is sniffed (header bytes, in Python); plain
    JPEG/PNG/BMP/GIF files are decoded and resized in the graph (module docstring), the rest by
    Pillow in data.num_parallel_calls threads. A graph decode that fails falls back to Pillow
    for that row, so no file can stop the iterator. With base_side > 0 every row takes the
    Pillow route (the overlay bases are Pillow images). data.prefetch batches ahead; images
    over data.max_pixels are refused. A row that cannot be read keeps its place in the batch
    with ok=False and a specific error.
    """
    h, w, channels = shape
    paths = list(paths)
    if base_side and bases is None:
        raise ValueError("base_side > 0 needs a Bases store to put the overlay bases in")

    def load(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
        _count("pillow")
        image, base, orig_hw, ok, error = load_example(
            paths[int(row)], (h, w), channels, base_side, data.max_pixels
        )
        if base is not None:
            bases.put(int(row), base)
        return image, orig_hw, ok, error

    def route(row: np.ndarray) -> tuple[np.int32, np.ndarray, bytes]:
        path = paths[int(row)]
        found = sniff(path, data.max_pixels, max(h, w)) if path else (PILLOW, 0, 0)
        if found[0] != PILLOW:
            checkpoint("decode")
            _count("fast")
        return np.int32(found[0]), np.asarray(found[1:], np.int32), os.fsencode(path)

    parallel, prefetch = data.num_parallel_calls, data.prefetch
    calls = tf.data.AUTOTUNE if parallel is None or parallel < 1 else parallel
    todo = np.arange(len(paths)) if rows is None else np.asarray(rows, np.int64)
    ds = tf.data.Dataset.from_tensor_slices(todo.astype(np.int64))
    pillow = _pillow_tf(load, shape)
    if FAST_ROUTE and not base_side:
        ds = ds.map(_sniff_tf(route), num_parallel_calls=calls, deterministic=True)
        one = _one_row(pillow, _fast_tf(shape))
        ds = ds.interleave(one, cycle_length=calls, num_parallel_calls=calls, deterministic=True)
    else:
        ds = ds.map(pillow, num_parallel_calls=calls, deterministic=True)
    ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)


Element = dict[str, tf.Tensor]


def _sniff_tf(route):
    """row -> (row, route, orig_hw, path) through the Python sniff."""

    def sniff_tf(row: tf.Tensor) -> tuple[tf.Tensor, ...]:
        kind, orig_hw, path = tf.numpy_function(
            route, [row], [tf.int32, tf.int32, tf.string], stateful=True
        )
        return row, tf.ensure_shape(kind, ()), tf.ensure_shape(orig_hw, (2,)), path

    return sniff_tf


def _pillow_tf(load, shape: tuple[int, int, int]):
    """row -> element through load_example (the Pillow route)."""

    def pillow_tf(row: tf.Tensor) -> Element:
        image, orig_hw, ok, error = tf.numpy_function(
            load, [row], [tf.uint8, tf.int32, tf.bool, tf.string], stateful=True
        )
        image = tf.ensure_shape(image, shape)
        orig_hw, ok, error = (
            tf.ensure_shape(t, s) for t, s in ((orig_hw, (2,)), (ok, ()), (error, ()))
        )
        return {"row": row, "image": image, "orig_hw": orig_hw, "ok": ok, "error": error}

    return pillow_tf


def _fast_tf(shape: tuple[int, int, int]):
    """(row, route, orig_hw, path) -> element, decoded and resized in the graph. Fails (and the
    row falls back to Pillow) when the decoder fails or its size differs from the header's."""
    h, w, channels = shape

    def fast_tf(row: tf.Tensor, kind: tf.Tensor, orig_hw: tf.Tensor, path: tf.Tensor) -> Element:
        image = decode_fast(tf.io.read_file(path), kind)  # (h0,w0,3)
        ratio = tf.where(kind <= JPEG_8, tf.bitwise.left_shift(1, kind - JPEG_1), 1)
        expect = -(-orig_hw // ratio)  # libjpeg's scaled size rounds up, as Pillow's draft
        with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(image)[:2], expect)]):
            image = pil_luma(image) if channels == 1 else tf.identity(image)
        image = pil_bilinear(image, h, w)
        return {"row": row, "image": image, "orig_hw": orig_hw, "ok": True, "error": ""}

    return fast_tf


def _one_row(pillow_tf, fast_tf):
    """(row, route, orig_hw, path) -> a one-element dataset: the fast route's element, or the
    Pillow route's when the sniff chose Pillow or the graph decode failed."""

    def one(
        row: tf.Tensor, kind: tf.Tensor, orig_hw: tf.Tensor, path: tf.Tensor
    ) -> tf.data.Dataset:
        fast = tf.data.Dataset.from_tensors((row, kind, orig_hw, path))
        fast = fast.filter(lambda r, k, s, p: k != PILLOW).map(fast_tf).ignore_errors()
        slow = tf.data.Dataset.from_tensors(row).map(pillow_tf)
        return fast.concatenate(slow).take(1)

    return one
