"""data.resize=bilinear: TF's decoders in the graph (the fast route) and Pillow give the same
pixels for every format, and each file takes the route it should."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import data as data_module
from pipeline.config import DataConfig
from pipeline.data import FIRST_BYTES, PILLOW, bases, batches, make_dataset, sniff
from pipeline.overlays import OverlayStyle, save_overlay

BIG = 10**9


def _photo(w: int = 500, h: int = 375, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: JPEG-like content that exercises the IDCT rounding."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 6, w)[None, :, None]
    y = np.linspace(0, 4, h)[:, None, None]
    wave = 127 + 60 * np.sin(x * np.array([1, 1.3, 0.7]) + y * np.array([0.5, 1.1, 2.0]))
    return Image.fromarray(np.clip(wave + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def _routes(paths: list[str], shape: tuple[int, int, int], **kw):
    """(images (N,H,W,C), routes taken as {"fast": n, "pillow": n}) through `batches`."""
    before = dict(data_module.routes_taken)
    found = list(batches(paths, range(len(paths)), shape, 4, DataConfig(**kw)))
    taken = {k: data_module.routes_taken[k] - before.get(k, 0) for k in ("fast", "pillow")}
    assert all(b["ok"].numpy().all() for b in found), [b["error"].numpy() for b in found]
    return np.concatenate([b["image"].numpy() for b in found]), taken


def _pillow(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The Pillow route's image: every row read by Pillow, resized in the graph."""
    found = next(iter(make_dataset([path], None, shape, 1, DataConfig(), pillow_only=True)))
    assert found["ok"].numpy().all(), found["error"].numpy()
    return found["image"].numpy()[0]


def _by_hand(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """An independent reference: Pillow decodes (libjpeg's scale as Image.draft picks it),
    tf.image.resize resizes, rounded to the nearest level."""
    with Image.open(path) as im:
        im.draft("RGB", (max(shape[:2]), max(shape[:2])))
        im = im.convert("RGBA").convert("RGB") if im.mode == "P" else im.convert("RGB")
        im = im.convert("L") if shape[2] == 1 else im
        pixels = np.asarray(im).reshape(im.height, im.width, shape[2])
    out = tf.image.resize(pixels, shape[:2], method="bilinear", antialias=False)
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)


CASES = {
    "jpeg_q90": lambda p: _photo().save(p, "JPEG", quality=90),
    "jpeg_444": lambda p: _photo().save(p, "JPEG", quality=95, subsampling=0),
    "jpeg_progressive": lambda p: _photo().save(p, "JPEG", quality=85, progressive=True),
    "jpeg_gray": lambda p: _photo().convert("L").save(p, "JPEG", quality=90),
    "jpeg_draft_4": lambda p: _photo(1600, 1200).save(p, "JPEG", quality=90),  # libjpeg scale
    "jpeg_exif_1": lambda p: _photo().save(p, "JPEG", exif=_exif(1)),
    "jpeg_exif_1_long": lambda p: _photo().save(p, "JPEG", exif=_exif(1, FIRST_BYTES * 3)),
    "png_rgb": lambda p: _photo(61, 47).save(p, "PNG"),
    "png_gray": lambda p: _photo(61, 47).convert("L").save(p, "PNG"),
    "png_gray_alpha": lambda p: _photo(61, 47).convert("LA").save(p, "PNG"),
    "png_rgba": lambda p: _photo(61, 47).convert("RGBA").save(p, "PNG"),
    "png_palette": lambda p: _photo(61, 47).convert("P", colors=200).save(p, "PNG"),
    "png_palette_alpha": lambda p: _photo(61, 47).convert("P").save(p, "PNG", transparency=3),
    "png_interlaced": lambda p: _photo(61, 47).save(p, "PNG", interlace=1),
    "bmp_24bit": lambda p: _photo(61, 47).save(p, "BMP"),
    "gif_interlaced": lambda p: _photo(61, 47).convert("P").save(p, "GIF"),
    "gif_sequential": lambda p: _photo(61, 47).convert("P").save(p, "GIF", interlace=False),
}


def _exif(orientation: int, padding: int = 0) -> Image.Exif:
    """An Exif block with this orientation; `padding` bytes of ImageDescription make it long
    (the header then ends past the sniff's first read)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    if padding:
        exif[0x010E] = "x" * padding
    return exif


@pytest.mark.parametrize("name", list(CASES))
def test_fast_route_gives_pillow_pixels(tmp_path, name):
    """Measured: identical for every format, JPEG included (dct_method=INTEGER_ACCURATE; TF's
    default INTEGER_FAST differs by up to 5 levels in ~2/3 of the pixels). So: exact, and the
    fast route must have been taken (a silent fall back to Pillow would pass the pixels)."""
    path = str(tmp_path / f"{name}.img")
    CASES[name](path)
    for shape in ((224, 224, 3), (224, 224, 1), (32, 48, 3)):
        images, taken = _routes([path], shape)
        assert taken == {"fast": 1, "pillow": 0}, (name, shape, taken)
        np.testing.assert_array_equal(images[0], _pillow(path, shape), err_msg=f"{shape}")
        np.testing.assert_array_equal(images[0], _by_hand(path, shape), err_msg=f"{shape}")


@pytest.mark.parametrize("padding", [0, FIRST_BYTES * 3], ids=["short_exif", "long_exif"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_is_upright_and_takes_pillow(tmp_path, orientation, padding):
    img = Image.new("RGB", (80, 60), (30, 30, 200))
    img.paste((200, 30, 30), (0, 0, 40, 60))  # left half red
    path = str(tmp_path / "rot.jpg")
    img.save(path, "JPEG", quality=95, exif=_exif(orientation, padding))
    assert padding == 0 or Path(path).read_bytes()[:FIRST_BYTES].count(b"\xff\xda") == 0
    images, taken = _routes([path], (40, 40, 3))
    assert taken == {"fast": 0, "pillow": 1}
    np.testing.assert_array_equal(images[0], _pillow(path, (40, 40, 3)))
    red = images[0, :, :, 0].astype(int) - images[0, :, :, 2]  # (40,40) >0 where red
    where = {3: red[:, 30].mean(), 6: red[5].mean(), 8: red[35].mean()}[orientation]
    assert where > 80, "red should be right (3), top (6) or bottom (8) once upright"


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _photo(60, 40).convert("CMYK").save(p, "JPEG"),
        lambda p: Image.fromarray(np.zeros((8, 8), np.uint16)).save(p, "PNG"),
        lambda p: _photo(60, 40).convert("1").save(p, "PNG"),
        lambda p: _photo(60, 40).save(
            p, "GIF", save_all=True, append_images=[_photo(60, 40, seed=1)]
        ),
        lambda p: _photo(60, 40).save(p, "TIFF"),
        lambda p: _photo(60, 40).save(p, "WEBP"),
        lambda p: p.write_bytes(_jpeg()[:-2]),  # no end-of-image marker: maybe truncated
    ],
    ids=[
        "cmyk_jpeg",
        "png_16bit",
        "png_1bit_gray",
        "animated_gif",
        "tiff",
        "webp",
        "jpeg_without_eoi",
    ],
)
def test_what_the_sniff_is_unsure_of_takes_pillow(tmp_path, make):
    path = tmp_path / "odd.img"
    make(path)
    assert sniff(str(path), BIG, 224)[0] == PILLOW


def test_plain_files_take_the_fast_route_unless_told_otherwise(tmp_path):
    paths = [str(tmp_path / n) for n in ("a.jpg", "b.png", "c.jpg")]
    for path in paths:
        _photo(100, 80).save(path)
    _, taken = _routes(paths, (32, 32, 3))
    assert taken == {"fast": 3, "pillow": 0}
    images, taken = _routes(paths, (32, 32, 3), resize="pillow")  # Pillow decodes and resizes
    assert taken == {"fast": 0, "pillow": 3}
    with Image.open(paths[1]) as im:  # the PNG: no libjpeg scaling to mirror
        np.testing.assert_array_equal(images[1], np.asarray(im.resize((32, 32), Image.BILINEAR)))


def _jpeg() -> bytes:
    buf = io.BytesIO()
    _photo(64, 48).save(buf, "JPEG")
    return buf.getvalue()


def test_a_failing_graph_decode_falls_back_to_pillow_for_its_batch(tmp_path):
    """A PNG whose IDAT CRC is wrong passes the sniff; libpng refuses it, Pillow (which does
    not check IDAT CRCs) decodes it. Its batch is read again by Pillow; the next is not."""
    buf = io.BytesIO()
    _photo(40, 30).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    at = raw.index(b"IDAT")
    length = struct.unpack(">I", raw[at - 4 : at])[0]
    crc = zlib.crc32(raw[at : at + 4 + length]) ^ 1
    raw[at + 4 + length : at + 8 + length] = struct.pack(">I", crc & 0xFFFFFFFF)
    (tmp_path / "crc.png").write_bytes(bytes(raw))
    _photo(40, 30).save(tmp_path / "good.png")
    paths = [str(tmp_path / "good.png"), str(tmp_path / "crc.png")] + [
        str(tmp_path / "good.png")
    ] * 5
    images, taken = _routes(paths, (16, 16, 3))  # batches of 4: the first fails in the graph
    assert taken == {"fast": 7, "pillow": 4}
    np.testing.assert_array_equal(images[1], _pillow(paths[1], (16, 16, 3)))
    for i in (0, 2, 3, 4, 5, 6):
        np.testing.assert_array_equal(images[i], images[0])


@pytest.mark.parametrize(
    "name", ["jpeg_q90", "jpeg_gray", "png_palette_alpha", "gif_interlaced", "jpeg_draft_4"]
)
def test_overlay_base_from_tf_data_gives_the_renderers_pixels(tmp_path, name):
    """With every overlay, tf.data hands the writer the decoded image when it is the overlay's
    base as is; the overlay is then byte-identical to one rendered by re-opening the file.
    Images decoded at a reduced scale (or larger than the overlay) come without a base. The
    bases of a batch are padded to its longest: a smaller image batched after it keeps its own
    pixels."""
    path, small = str(tmp_path / f"{name}.img"), str(tmp_path / "small.png")
    CASES[name](path)
    pixels = np.random.default_rng(1).integers(0, 256, (5, 9, 3), np.uint8)
    Image.fromarray(pixels).save(small)
    style = OverlayStyle(max_side=512)
    shape = (224, 224, 1)
    batch = next(iter(make_dataset([path, small], None, shape, 2, DataConfig(), base_side=512)))
    base, small_base = bases(batch)
    np.testing.assert_array_equal(small_base, pixels)
    heat = np.random.default_rng(0).random((7, 7)).astype(np.float16)
    if name == "jpeg_draft_4":  # 1600x1200: decoded at 1/4 for the model, 512 for the overlay
        assert base is None
        return
    save_overlay(tmp_path / "from_base.jpg", path, heat, style, base)
    save_overlay(tmp_path / "reopened.jpg", path, heat, style)
    assert (tmp_path / "from_base.jpg").read_bytes() == (tmp_path / "reopened.jpg").read_bytes()


def _stateful_ops(dataset: tf.data.Dataset) -> set[str]:
    """The stateful ops in the functions of a dataset's graph (TF's op registry decides)."""
    from tensorflow.core.framework import graph_pb2
    from tensorflow.python.framework import op_def_registry

    graph = graph_pb2.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for f in graph.library.function for node in f.node_def}
    defs = {op: op_def_registry.get(op) for op in ops}  # None: a library function, seen above
    return {op for op, op_def in defs.items() if op_def is not None and op_def.is_stateful}


@pytest.mark.parametrize("resize,base_side", [("bilinear", 0), ("bilinear", 64), ("pillow", 0)])
def test_dataset_functions_hold_no_stateful_op(tmp_path, resize, base_side):
    """Under op determinism (deterministic=true, the default) tf.data runs every parallel map
    serially and drops every prefetch buffer when any dataset function holds a stateful op (a
    numpy_function not declared stateless, an Assert): the decoders then ran on one thread."""
    paths = [str(tmp_path / "a.png")]
    _photo(40, 30).save(paths[0])
    pillow_only = resize == "bilinear" and base_side == 0  # the Pillow route inside the graph
    for only in {False, pillow_only}:
        data = DataConfig(resize=resize)
        dataset = make_dataset(paths, None, (16, 16, 3), 1, data, only, base_side)
        assert _stateful_ops(dataset) == set(), (resize, base_side, only)


def test_the_fast_routes_size_check_accepts_only_the_headers_size():
    """_with_size, the stateless stand-in for an Assert: the image itself when its size is the
    header's, an InvalidArgumentError (its batch goes to Pillow) for any other size."""
    check = tf.function(data_module._with_size, autograph=False)
    image = tf.reshape(tf.range(4 * 6 * 3, dtype=tf.int32), (4, 6, 3))
    np.testing.assert_array_equal(check(image, tf.constant([4, 6])), image)
    for hw in ([6, 4], [4, 5], [3, 6], [5, 6], [2, 12], [8, 3]):  # swapped, smaller, same count
        with pytest.raises(tf.errors.InvalidArgumentError):
            check(image, tf.constant(hw))
