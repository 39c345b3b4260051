"""tf.data: manifest paths -> decoded, resized batches (+ row ids, original sizes, load errors).

data.resize=bilinear (default): plain JPEG/PNG/BMP/GIF files are decoded by TensorFlow's own
decoders inside the graph; a header sniff (a few hundred bytes parsed in Python, a block of rows
per call) sends everything it is not sure of (EXIF rotation, CMYK, 16-bit, animations, ...) to
Pillow. Both routes give the same decoded pixels (JPEG with dct_method="INTEGER_ACCURATE", which
is libjpeg's default and Pillow's; tests/test_decode.py checks every format bit for bit) and
both are resized by tf.image.resize's bilinear without antialiasing, as Keras' own
image_dataset_from_directory does. data.resize=pillow: Pillow decodes and resizes (BILINEAR,
antialiased) every row, in Python, at about twice the CPU per image.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from pipeline.config import DataConfig
from pipeline.faults import checkpoint
from pipeline.images import LoadError, open_image

Image.MAX_IMAGE_PIXELS = None  # we refuse oversized images ourselves, before decoding
log = logging.getLogger(__name__)


def load_example(
    path: str, size: tuple[int, int], channels: int, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    """data.resize=pillow, one row: (image (H,W,C) uint8 resized by Pillow's BILINEAR, orig_hw
    (2,) int32, ok, error)."""
    checkpoint("decode")
    h, w = size
    image = np.zeros((h, w, channels), np.uint8)
    orig_hw = np.zeros(2, np.int32)
    try:
        im, (oh, ow) = _open(path, channels, max_pixels, max(h, w))
        orig_hw[:] = (oh, ow)
        image[:] = np.asarray(im.resize((w, h), Image.BILINEAR)).reshape(h, w, channels)
        return image, orig_hw, True, b""
    except LoadError as exc:
        return image, orig_hw, False, str(exc).encode("utf-8")


def load_decoded(
    path: str, side: int, channels: int, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    """data.resize=bilinear, one row through Pillow: (image (h0,w0,C) uint8 as decoded, JPEGs
    at libjpeg's reduced scale as the fast route decodes them; (1,1,C) zeros for a row that
    fails, orig_hw (2,) int32, ok, error). The graph resizes it like a fast-route image."""
    checkpoint("decode")
    orig_hw = np.zeros(2, np.int32)
    try:
        im, (oh, ow) = _open(path, channels, max_pixels, side)
        orig_hw[:] = (oh, ow)
        return np.asarray(im).reshape(im.height, im.width, channels), orig_hw, True, b""
    except LoadError as exc:
        return np.zeros((1, 1, channels), np.uint8), orig_hw, False, str(exc).encode("utf-8")


def _open(
    path: str, channels: int, max_pixels: int, side: int
) -> tuple[Image.Image, tuple[int, int]]:
    """open_image as RGB, then 'L' for one channel: libjpeg's own grayscale output would
    differ from the fast route's (which converts RGB as Pillow's convert('L') does)."""
    im, size = open_image(path, "RGB", max_pixels, draft_side=side)
    return (im.convert("L") if channels == 1 else im), size


def tf_bilinear(image: tf.Tensor, out_h: int, out_w: int) -> tf.Tensor:
    """(h0,w0,C) uint8 -> (out_h,out_w,C) uint8: tf.image.resize's bilinear without
    antialiasing (Keras' image_dataset_from_directory and Resizing), rounded to the nearest
    level (half to even)."""
    out = tf.image.resize(image, (out_h, out_w), method="bilinear", antialias=False)
    return tf.ensure_shape(tf.saturate_cast(tf.round(out), tf.uint8), (out_h, out_w, None))


# Routes: what the sniff hands the graph. JPEG routes carry libjpeg's scale (Pillow's draft).
PILLOW, JPEG_1, JPEG_2, JPEG_4, JPEG_8, PNG, BMP, GIF = range(8)
JPEG_RATIOS = {1: JPEG_1, 2: JPEG_2, 4: JPEG_4, 8: JPEG_8}
HEAD_BYTES = 65536  # a JPEG header (Exif included) longer than this takes the Pillow route
FIRST_BYTES = 4096  # read first: most headers end before this (27-38 against 45-47 us a file)
SNIFF_BATCH = 64  # rows sniffed per Python call (one call per row costs more than the sniff)
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
            head, nbytes = f.read(FIRST_BYTES), os.fstat(f.fileno()).st_size
            route, size = PILLOW, None
            if head[:3] == b"\xff\xd8\xff":
                f.seek(max(nbytes - 2, 0))
                whole = f.read(2) == b"\xff\xd9"
                size = jpeg_size(head) if whole else None
                if size is None and whole and len(head) < min(nbytes, HEAD_BYTES):
                    f.seek(0)  # a longer header (an Exif thumbnail, say): read up to HEAD_BYTES
                    size = jpeg_size(f.read(HEAD_BYTES))
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
    return route, size[0], size[1]


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


Element = dict[str, tf.Tensor]
# STATELESS: every op in the dataset's functions is stateless. Under op determinism (the
# default `deterministic=true`) tf.data rewrites a pipeline whose functions hold a stateful op:
# its parallel maps run serially and its prefetch buffers drop to 0 (grappler's
# make_deterministic). A numpy_function is stateful unless declared otherwise, and so is
# tf.debugging.assert_*: the decoders ran on one thread, in step with the model, a quarter of
# the whole run's throughput. The Python loaders are pure functions of their row (the file);
# their counters and fault checkpoints are instrumentation, thread-safe and order-free.
# tf.data's autotuning model thread made an iterator's teardown wait for its next optimisation
# round: 4.4-4.9 s at the end of about half the runs of 1,536 images (the process idle, the main
# thread in ~RootDataset::Iterator). Without it AUTOTUNE decodes on one thread per core (at
# most 16) and a prefetch of AUTOTUNE still grows its buffer; throughput was the same.
_NO_MODEL_THREAD = tf.data.Options()
_NO_MODEL_THREAD.autotune.enabled = False


def make_dataset(
    paths: Sequence[str],
    rows: Sequence[int] | None,
    shape: tuple[int, int, int],
    batch_size: int,
    data: DataConfig,
    pillow_only: bool = False,
    base_side: int = 0,
) -> tf.data.Dataset:
    """Batches of `rows` (default: all), in order: dict(row, image, orig_hw, ok, error); `row`
    indexes `paths`, `image` is (B,H,W,C) uint8 for shape = (H,W,C). With base_side > 0
    (data.resize=bilinear), also `base` (B,L) uint8 and `base_hw` (B,2) int32 (bases() turns
    them into images): a fast-route image as decoded, flattened, when it is the overlay's base
    as is (decoded at full scale, longest side <= base_side: the overlay renderer would decode
    the same pixels); (0,0) otherwise, and the overlay writer opens the image itself.

    data.resize=bilinear: rows are sniffed SNIFF_BATCH at a time (header bytes, in Python);
    plain JPEG/PNG/BMP/GIF files are decoded by TF in the graph, the rest (and all of them with
    pillow_only) by Pillow in numpy_function; both are resized by tf_bilinear in the graph.
    data.resize=pillow: Pillow decodes and resizes every row. data.num_parallel_calls rows at
    once (-1: one per core, at most 16), data.prefetch batches ahead (-1: a buffer that grows
    while the model waits); images over data.max_pixels are refused. A row that
    cannot be read keeps its place with ok=False and a specific error. A batch can still fail
    when TF's decoder refuses a file the sniff passed: `batches` reads it again with Pillow.
    """
    parallel, prefetch = data.num_parallel_calls, data.prefetch
    calls = tf.data.AUTOTUNE if parallel is None or parallel < 1 else parallel
    todo = np.arange(len(paths)) if rows is None else np.asarray(rows, np.int64)
    ds = tf.data.Dataset.from_tensor_slices(todo.astype(np.int64))
    plain = tf.autograph.experimental.do_not_convert  # traced as written: 0.5 s less startup
    if data.resize == "pillow":
        ds = ds.map(plain(_pillow_tf(paths, shape, data.max_pixels)), calls, deterministic=True)
    else:
        sniffed = _sniff_tf(paths, max(shape[:2]), data.max_pixels, pillow_only)
        ds = ds.batch(SNIFF_BATCH).map(plain(sniffed)).unbatch()
        decode = _decode_tf(paths, shape, data.max_pixels, base_side)
        ds = ds.map(plain(decode), calls, deterministic=True)
    ds = ds.padded_batch(batch_size) if base_side else ds.batch(batch_size)
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
    return ds.with_options(_NO_MODEL_THREAD)


def batches(
    paths: Sequence[str],
    rows: Sequence[int],
    shape: tuple[int, int, int],
    batch_size: int,
    data: DataConfig,
    base_side: int = 0,
) -> Iterator[Element]:
    """make_dataset's batches of `rows`; a batch that fails in the graph (TF's decoder refused a
    file the sniff passed, e.g. a PNG with a bad CRC that Pillow reads) is read again with
    Pillow alone, so no file can stop a run.

    EXIT: close this generator when done with it, before the interpreter exits. tf.data decodes
    ahead in parallel, and its iterator's destructor waits for the decoding calls in flight; a
    numpy_function call that starts while the interpreter is shutting down never returns (the
    thread taking the GIL is ended), so an iterator left to the final collection waits forever.
    That hung stopped runs after "stopped by SIGTERM" (about one stop in twenty in the tests):
    their exception kept the loop's frame, and this generator with it, in a reference cycle."""
    rows = list(rows)
    found = iter(make_dataset(paths, rows, shape, batch_size, data, base_side=base_side))
    for start in range(0, len(rows), batch_size):
        try:
            yield next(found)
        except tf.errors.OpError as exc:
            again = rows[start : start + batch_size]
            reason = " ".join(exc.message.split())[:200]
            log.info(
                "rows %d-%d: TF's decoder failed (%s); Pillow reads them",
                again[0],
                again[-1],
                reason,
            )
            yield next(iter(make_dataset(paths, again, shape, batch_size, data, True, base_side)))


def _pillow_tf(paths: Sequence[str], shape: tuple[int, int, int], max_pixels: int):
    """row -> element through load_example (data.resize=pillow)."""

    def pillow_tf(row: tf.Tensor) -> Element:
        image, orig_hw, ok, error = _through_pillow(
            lambda r: load_example(paths[r], shape[:2], shape[2], max_pixels), row
        )
        return _element(row, tf.ensure_shape(image, shape), orig_hw, ok, error)

    return pillow_tf


def _through_pillow(load_row, row: tf.Tensor) -> list[tf.Tensor]:
    """(image, orig_hw, ok, error) of one row from load_row(row index), a Pillow loader run
    in numpy_function (both resize modes' Pillow route)."""

    def load(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
        _count("pillow")
        return load_row(int(r))

    types = [tf.uint8, tf.int32, tf.bool, tf.string]
    return tf.numpy_function(load, [row], types, stateful=False)  # see STATELESS


def _element(row, image, orig_hw, ok, error) -> Element:
    orig_hw, ok, error = (
        tf.ensure_shape(t, s) for t, s in ((orig_hw, (2,)), (ok, ()), (error, ()))
    )
    return {"row": row, "image": image, "orig_hw": orig_hw, "ok": ok, "error": error}


def _with_size(rgb: tf.Tensor, hw: tf.Tensor) -> tf.Tensor:
    """rgb (h0,w0,C) itself when (h0,w0) == hw, else an InvalidArgumentError, without a
    stateful Assert (see STATELESS): the slice fails when hw exceeds (h0,w0) on an axis, the
    reshape when the element counts differ; together they leave only equality. (A slice of
    the whole tensor is the tensor: nothing is copied.)"""
    size = tf.concat([hw, tf.shape(rgb)[2:]], axis=0)  # (3,)
    inside = tf.slice(rgb, tf.zeros_like(size), size)  # (h,w,C) when h <= h0 and w <= w0
    return tf.reshape(inside, tf.shape(rgb))  # h*w == h0*w0


def _sniff_tf(paths: Sequence[str], side: int, max_pixels: int, pillow_only: bool):
    """rows (n,) -> (rows, route (n,), orig_hw (n,2), path (n,)) through `sniff`, one Python
    call for a whole block of rows."""

    def route(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kinds, sizes = np.zeros(len(rows), np.int32), np.zeros((len(rows), 2), np.int32)
        for i, row in enumerate(rows):
            path = paths[int(row)]
            if path and not pillow_only:
                kinds[i], *sizes[i] = sniff(path, max_pixels, side)
            if kinds[i] != PILLOW:
                checkpoint("decode")
                _count("fast")
        return kinds, sizes, np.array([os.fsencode(paths[int(r)]) for r in rows], object)

    def sniff_tf(rows: tf.Tensor) -> tuple[tf.Tensor, ...]:
        kinds, sizes, names = tf.numpy_function(
            route,
            [rows],
            [tf.int32, tf.int32, tf.string],
            stateful=False,  # see STATELESS
        )
        n = tf.shape(rows)[0]
        return rows, tf.ensure_shape(kinds, (None,)), tf.reshape(sizes, (n, 2)), names

    return sniff_tf


def _decode_tf(paths: Sequence[str], shape: tuple[int, int, int], max_pixels: int, base_side: int):
    """(row, route, orig_hw, path) -> element: decoded by TF (fast routes) or Pillow, then
    resized by tf_bilinear (+ the overlay base, see make_dataset). The fast route fails when
    its decoder does or when the decoded size differs from the header's."""
    h, w, channels = shape

    def pillow(row: tf.Tensor) -> tuple[tf.Tensor, ...]:
        image, orig_hw, ok, error = _through_pillow(
            lambda r: load_decoded(paths[r], max(h, w), channels, max_pixels), row
        )
        none = tf.zeros((0, 0, 3), tf.uint8)  # no overlay base from this route
        return tf.ensure_shape(image, (None, None, channels)), none, orig_hw, ok, error

    def fast(kind: tf.Tensor, orig_hw: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, ...]:
        rgb = decode_fast(tf.io.read_file(path), kind)  # (h0,w0,3)
        ratio = tf.where(kind <= JPEG_8, tf.bitwise.left_shift(1, kind - JPEG_1), 1)
        expect = -(-orig_hw // ratio)  # libjpeg's scaled size rounds up, as Pillow's draft
        rgb = _with_size(rgb, expect)
        image = pil_luma(rgb) if channels == 1 else rgb
        return image, rgb, orig_hw, tf.constant(True), tf.constant("")

    def decode_tf(row: tf.Tensor, kind: tf.Tensor, orig_hw: tf.Tensor, path: tf.Tensor) -> Element:
        image, rgb, orig_hw, ok, error = tf.cond(
            kind == PILLOW, lambda: pillow(row), lambda: fast(kind, orig_hw, path)
        )
        element = _element(row, tf_bilinear(image, h, w), orig_hw, ok, error)
        if base_side:
            element["base"], element["base_hw"] = _overlay_base(rgb, orig_hw, base_side)
        return element

    return decode_tf


def _overlay_base(rgb: tf.Tensor, orig_hw: tf.Tensor, side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(rgb flattened (h*w*3,), (h,w)) when rgb was decoded at full scale and fits in side;
    ((0,), (0,0)) otherwise. Flat, so make_dataset's padded_batch pads only to the batch's
    longest base (nothing, when the images have one size)."""
    hw = tf.shape(rgb)[:2]
    fits = tf.reduce_all(hw == orig_hw) & (tf.reduce_max(hw) <= side)
    return tf.reshape(rgb, [-1])[: tf.where(fits, tf.size(rgb), 0)], tf.where(fits, hw, 0)


def bases(batch: Element) -> list[np.ndarray | None]:
    """A batch's overlay bases (make_dataset with base_side): (h,w,3) uint8 views, None where
    the overlay writer is to open the image itself."""
    flat, sizes = batch["base"].numpy(), batch["base_hw"].numpy()  # (B,L) padded, (B,2)
    return [b[: h * w * 3].reshape(h, w, 3) if h else None for b, (h, w) in zip(flat, sizes)]
