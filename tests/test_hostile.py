"""Hostile inputs: a corpus of broken and odd files runs to completion, each row specific."""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import custom_model
from PIL import Image


def png_bomb(path: Path, side: int = 30000) -> None:
    """A tiny PNG whose header claims side x side RGB pixels (2.7 GB decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side * 3 + 1) * 4)  # a few rows; the decoder would want all
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _photo(w: int = 60, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def build_corpus(folder: Path) -> list[tuple[str, str, str, str | None]]:
    """Files + manifest rows: (path, id, label, box) with the expected (status, message)."""
    folder.mkdir()
    (folder / "a directory.png").mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.jpg").write_bytes(_bytes(_photo(), "JPEG")[:400])
    (folder / "cut.png").write_bytes(_bytes(_photo(), "PNG")[:-60])
    (folder / "text.jpg").write_text("just some text\n")
    (folder / "page.png").write_text("<!doctype html><html><body>404</body></html>")
    png_bomb(folder / "bomb.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "one.png")
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(
        folder / "deep16.png"
    )
    _photo().convert("CMYK").save(folder / "cmyk.jpg")
    palette = _photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette_alpha.png", transparency=0)
    _photo().convert("LA").save(folder / "gray_alpha.png")
    frames = [_photo(), _photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "pages.tiff", save_all=True, append_images=frames[1:])
    _photo().save(folder / "photo.webp")
    _photo().save(folder / "photo.bmp")
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo().save(folder / "rotated.jpg", exif=exif)
    _photo().save(folder / "with spaces in name.png")
    _photo().save(folder / "ünïcødé_画像.png")
    _photo().save(folder / "plain.png")
    return [
        ("missing.png", "missing", "1", None, "error", "file not found"),
        ("a directory.png", "dir", "1", None, "error", "is a directory"),
        ("empty.jpg", "empty", "1", None, "error", "empty file (0 bytes)"),
        ("cut.jpg", "cut-jpeg", "1", None, "error", "truncated or corrupt image"),
        ("cut.png", "cut-png", "1", None, "error", "truncated or corrupt image"),
        ("text.jpg", "text", "1", None, "error", "not a recognised image format"),
        ("page.png", "html", "1", None, "error", "not a recognised image format"),
        ("bomb.png", "bomb", "1", None, "error", "30000x30000 = 900000000 pixels"),
        ("one.png", "one-pixel", "1", None, "ok", None),
        ("deep16.png", "16-bit", "1", None, "ok", None),
        ("cmyk.jpg", "cmyk", "1", None, "ok", None),
        ("palette_alpha.png", "palette", "1", None, "ok", None),
        ("gray_alpha.png", "gray-alpha", "1", None, "ok", None),
        ("anim.gif", "gif", "1", None, "ok", None),
        ("pages.tiff", "tiff", "1", None, "ok", None),
        ("photo.webp", "webp", "1", None, "ok", None),
        ("photo.bmp", "bmp", "1", None, "ok", None),
        ("rotated.jpg", "exif", "1", None, "ok", None),
        ("with spaces in name.png", "spaces", "1", None, "ok", None),
        ("ünïcødé_画像.png", "unicode", "1", None, "ok", None),
        ("plain.png", "dup", "1", None, "ok", None),
        ("plain.png", "dup", "1", None, "ok", None),
        ("plain.png", "unknown-label", "zebra", None, "ok", "warn:label 'zebra'"),
        ("plain.png", "box-outside", "1", "10,10,500,500", "ok", "warn:outside"),
        ("plain.png", "box-reversed", "1", "50,10,20,30", "ok", "warn:x1<=x0"),
        ("plain.png", "../../escape", "1", None, "ok", None),
    ]


@pytest.mark.slow
def test_corpus_runs_to_completion_with_specific_rows(tmp_path, model_files):
    corpus = build_corpus(tmp_path / "files")
    lines = ["path,id,label,x0,y0,x1,y1"]
    for path, row_id, label, box, _, _ in corpus:
        lines.append(f'"files/{path}",{row_id},{label},{box or ",,,"}')
    manifest = tmp_path / "hostile.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            *custom_model(model_files["rgb"], manifest),
            f"output_dir={out}",
            "batch_size=4",
            "max_error_rate=1.0",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kb < 2_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB: the bomb was decoded?"
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == len(corpus) >= 25
    assert summary["id"].tolist() == [c[1] for c in corpus]
    for (_, row_id, _, _, status, message), row in zip(corpus, summary.itertuples()):
        assert row.status == status, (row_id, row.error)
        if status == "error":
            assert message in row.error, (row_id, row.error)
        elif message:
            assert message.removeprefix("warn:") in row.warning, (row_id, row.warning)
            if "box" in row_id:
                assert pd.isna(row.energy_in_box)
        else:
            assert pd.isna(row.warning), (row_id, row.warning)
    ok = summary[summary["status"] == "ok"]
    assert len(ok) == 18 and not ok.duplicated(["heatmap_file", "heatmap_index"]).any()
    assert ok.set_index("id").loc["exif", ["width", "height"]].tolist() == [40, 60]
    assert pd.isna(ok.set_index("id").loc["unknown-label", "label_index"])
    written = [p.resolve() for p in out.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(out.resolve()) for p in written)
    assert not (tmp_path / "escape.npy").exists()
