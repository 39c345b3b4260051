"""Writers: heatmap arrays, overlays, colour maps, JSON. All writes are atomic."""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from pipeline.faults import checkpoint

T = TypeVar("T")


def jet_lut() -> np.ndarray:
    """The classic jet colour map as a (256, 3) uint8 table (no matplotlib needed)."""
    x = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3, 2, 1)], axis=1)
    return np.round(rgb * 255).astype(np.uint8)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(row: int, row_id: str, max_len: int = 80) -> str:
    """A file stem from a row number and an id: unique, no separators, never '..'-escaping."""
    slug = _UNSAFE.sub("_", row_id).strip("._") or "image"
    return f"{row:07d}-{slug[-max_len:]}"


def _in_its_folder(path: Path, make: Callable[[], T]) -> T:
    """make(), which creates a file beside `path`; when the folder is missing, the folder is
    made and make() called again. A mkdir before every file was a system call and a path walk
    for each of thousands of overlays or per-row maps; now only a folder's first file pays."""
    try:
        return make()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make()


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename onto `path`: readers never see a half file."""
    prefix = f".{path.name}."
    fd, tmp = _in_its_folder(
        path, lambda: tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    )
    os.close(fd)
    _write_then_rename(tmp, path, write)


def atomic_write_file(path: Path, write) -> None:
    """Call write(file), a binary file open on a temporary named by process and thread
    (.<name>.<pid>-<thread>.tmp, which resume's cleanup knows), then rename it onto `path`:
    one open, no mkstemp probing. Pillow encodes straight into such a file without the GIL
    (into memory it holds the GIL), so an overlay's JPEG encode no longer stalls the loop."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")

    def opened(name: str) -> None:
        with _in_its_folder(path, lambda: open(name, "wb")) as file:
            write(file)

    _write_then_rename(str(tmp), path, opened)


def _write_then_rename(tmp: str, path: Path, write) -> None:
    """write(tmp), then rename it onto `path`; on any failure the temporary is removed."""
    try:
        write(tmp)
        checkpoint("write")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_heatmap(path: Path, heatmap: np.ndarray) -> None:
    """One map (h,w) float32 as .npy."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, heatmap.astype(np.float32, copy=False))

    atomic_write(path, write)


def save_guided(path: Path, guided: np.ndarray) -> None:
    """Guided Grad-CAM (H,W,C) as .npy, and beside it as a PNG (the usual visualisation:
    standardised, scaled by 0.1 around mid-grey)."""
    save_heatmap(path, guided)
    g = guided.astype(np.float64)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    pixels = np.clip(g * 255, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    atomic_write(path.with_suffix(".png"), lambda tmp: image.save(tmp, format="PNG"))


def read_map(path: Path) -> np.ndarray | None:
    """A saved map (h,w) as float32; None when the file is missing or unreadable."""
    try:
        return np.load(path).astype(np.float32)
    except (OSError, ValueError):
        return None


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map (h,w) resized bilinearly to size (H,W); unchanged when it already has that size."""
    if heat.shape == tuple(size):
        return heat
    return np.asarray(Image.fromarray(heat, "F").resize(tuple(size)[::-1], Image.BILINEAR))


def save_mean_map(mean: np.ndarray, stem: Path) -> None:
    """A mean map as stem.npy (float32 in [0,1]) and beside it a jet stem.png."""
    save_heatmap(stem.with_suffix(".npy"), np.clip(mean, 0.0, 1.0))
    jet_png(mean, stem.with_suffix(".png"))


def jet_png(heat: np.ndarray, path: Path, side: int = 192) -> None:
    """A [0,1] map as a jet-coloured PNG, scaled so its maximum is red."""
    top = float(heat.max()) if heat.size else 0.0
    norm = heat / top if top > 0 else heat
    rgb = jet_lut()[np.round(np.clip(norm, 0, 1) * 255).astype(np.int64)]  # (h,w,3)
    image = Image.fromarray(rgb).resize((side, side), Image.BILINEAR)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_json(path: Path, payload: dict) -> None:
    """Pretty JSON, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
