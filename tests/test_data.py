"""Decoding: formats and conversions the model needs, and specific errors for unusable files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.data import LoadError, load_decoded, load_example, make_dataset, open_image

BIG = 10**9


def _rgb(w: int = 40, h: int = 30) -> Image.Image:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, : w // 2] = (200, 30, 30)  # left half red, right half blue
    pixels[:, w // 2 :] = (30, 30, 200)
    return Image.fromarray(pixels)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


@pytest.mark.parametrize(
    "fmt,mode,kwargs",
    [
        ("png", "RGB", {}),
        ("jpg", "RGB", {"quality": 95}),
        ("bmp", "RGB", {}),
        ("webp", "RGB", {"lossless": True}),
        ("tiff", "RGB", {}),
        ("gif", "P", {}),
        ("png", "RGBA", {}),
        ("png", "L", {}),
        ("png", "LA", {}),
        ("jpg", "CMYK", {"quality": 95}),
    ],
)
def test_formats_decode_to_rgb(tmp_path, fmt, mode, kwargs):
    img = _rgb().convert(mode)
    path = _save(img, tmp_path / f"img_{mode}.{fmt}", **kwargs)
    out, (h, w) = open_image(path, "RGB", BIG)
    assert out.mode == "RGB" and (h, w) == (30, 40)
    pixels = np.asarray(out, np.int32)
    if mode in ("L", "LA"):
        assert pixels[5, 5, 0] == pixels[5, 5, 2]  # gray stays gray
    else:
        assert pixels[5, 5, 0] > pixels[5, 5, 2] + 80  # red left
        assert pixels[5, 35, 2] > pixels[5, 35, 0] + 80  # blue right


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    out, _ = open_image(path, "L", BIG)
    pixels = np.asarray(out)
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255 and 100 < pixels[4, 32] < 160


def test_exif_rotation_applied(tmp_path):
    img = _rgb(40, 30)  # landscape, red left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    out, (h, w) = open_image(path, "RGB", BIG)
    assert out.size == (30, 40) and (h, w) == (40, 30)  # portrait as displayed
    pixels = np.asarray(out, np.int32)
    assert pixels[5, 15, 0] > pixels[5, 15, 2] + 80  # red now on top
    assert pixels[35, 15, 2] > pixels[35, 15, 0] + 80


def test_animated_gif_and_multipage_tiff_take_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    tiff = tmp_path / "pages.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    for path in (gif, tiff):
        out, _ = open_image(str(path), "RGB", BIG)
        r, _, b = np.asarray(out, np.int32)[10, 10]
        assert r > 200 and b < 50, path.name


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("<html>not an image</html>"), "not a recognised image"),
        (lambda p: p.write_bytes(_jpeg_bytes()[:300]), "truncated"),
        (lambda p: p.write_bytes(_png_bytes()[:-40]), "truncated"),
    ],
    ids=["missing", "directory", "empty", "text", "truncated_jpeg", "truncated_png"],
)
def test_unusable_files_raise_specific_errors(tmp_path, make, message):
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(LoadError, match=message):
        open_image(str(path), "RGB", BIG)


def test_oversized_header_refused_before_decoding(tmp_path):
    path = _save(Image.new("L", (400, 300)), tmp_path / "big.png")
    with pytest.raises(LoadError, match="over data.max_pixels=100000"):
        open_image(path, "RGB", 100_000)


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, "JPEG"
    )
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, "PNG"
    )
    return buf.getvalue()


def test_load_example_and_load_decoded(tmp_path):
    """resize=pillow rows come resized; resize=bilinear's Pillow rows come as decoded (the
    graph resizes them), JPEGs at libjpeg's reduced scale; failures keep a specific error."""
    path = _save(_rgb(400, 300), tmp_path / "a.png")
    image, orig_hw, ok, err = load_example(path, (32, 48), 1, BIG)
    assert ok and err == b""
    assert image.shape == (32, 48, 1) and image.dtype == np.uint8
    assert tuple(orig_hw) == (300, 400)
    image, orig_hw, ok, err = load_decoded(path, 48, 3, BIG)
    assert ok and image.shape == (300, 400, 3) and tuple(orig_hw) == (300, 400)
    big = _save(_rgb(800, 600), tmp_path / "b.jpg", quality=95)
    assert load_decoded(big, 224, 3, BIG)[0].shape == (300, 400, 3)  # 1/2: still >= 224
    image, orig_hw, ok, err = load_decoded(str(tmp_path / "none.png"), 48, 1, BIG)
    assert not ok and image.shape == (1, 1, 1) and b"file not found" in err


@pytest.mark.parametrize("resize", ["bilinear", "pillow"])
def test_dataset_keeps_order_and_marks_bad_rows(tmp_path, resize):
    good = [_save(_rgb(), tmp_path / f"g{i}.png") for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"garbage")
    paths = [good[0], str(tmp_path / "bad.png"), good[1], "", good[2], good[3], good[4]]
    batches = list(make_dataset(paths, None, (16, 16, 3), 3, DataConfig(resize=resize)))
    assert [len(b["row"]) for b in batches] == [3, 3, 1]
    rows = np.concatenate([b["row"].numpy() for b in batches])
    ok = np.concatenate([b["ok"].numpy() for b in batches])
    errors = [e.decode() for b in batches for e in b["error"].numpy()]
    assert rows.tolist() == list(range(7))
    assert ok.tolist() == [True, False, True, False, True, True, True]
    assert "not a recognised image" in errors[1] and "empty path" in errors[3]


@pytest.mark.parametrize("resize", ["bilinear", "pillow"])
def test_dataset_takes_its_limits_from_the_data_config(tmp_path, resize):
    paths = [_save(_rgb(40, 30), tmp_path / "a.png"), _save(_rgb(8, 8), tmp_path / "b.png")]
    data = DataConfig(num_parallel_calls=1, prefetch=0, max_pixels=100, resize=resize)
    batch = next(iter(make_dataset(paths, [1, 0], (16, 16, 1), 4, data)))
    assert batch["row"].numpy().tolist() == [1, 0] and batch["image"].shape == (2, 16, 16, 1)
    assert batch["ok"].numpy().tolist() == [True, False]
    assert "over data.max_pixels=100" in batch["error"].numpy()[1].decode()


@pytest.mark.parametrize("resize", ["bilinear", "pillow"])
def test_dataset_runs_without_the_autotuning_model_thread(tmp_path, resize):
    """tf.data's autotuning model thread made the iterator's teardown wait for its next round,
    4-5 s at the end of about half the runs (the process idle); make_dataset turns it off."""
    paths = [_save(_rgb(), tmp_path / "a.png")]
    dataset = make_dataset(paths, None, (16, 16, 3), 1, DataConfig(resize=resize))
    assert dataset.options().autotune.enabled is False
