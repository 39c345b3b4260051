"""Saved maps, whatever heatmaps.format wrote: one array file per committed chunk (chunks,
the default) or one .npy per row (files). load_heatmaps reads either; no TensorFlow here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.faults import checkpoint
from pipeline.outputs import atomic_write, read_map

MAP_COLUMNS = ["heatmap_path", "heatmap_file", "heatmap_index"]
CHUNK_DTYPE = np.float16  # maps are in [0,1]: float16 keeps them to 5e-4 at half the bytes


def chunk_file(first_row: int, chunk_rows: int) -> str:
    """The chunk file (relative to the output folder) of the chunk that starts at manifest row
    `first_row`: numbered by the manifest's blocks, so shards never share a name."""
    return f"heatmaps/chunk-{first_row // chunk_rows:06d}.npy"


def write_chunk(path: Path, maps: np.ndarray) -> None:
    """One chunk's maps (n,h,w) as float16, atomically: a crash leaves no half file."""

    array = np.ascontiguousarray(maps, CHUNK_DTYPE)

    def write(tmp: str) -> None:  # the bytes of np.save, in two halves (see faults "chunk")
        data = array.reshape(-1).view(np.uint8)
        with open(tmp, "wb") as f:
            header = np.lib.format.header_data_from_array_1_0(array)
            np.lib.format.write_array_header_1_0(f, header)
            f.write(data[: len(data) // 2])
            checkpoint("chunk")  # a disk that fills up half way through the array
            f.write(data[len(data) // 2 :])

    atomic_write(path, write)


def has_map(output_dir: str | Path, summary: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the row points to a map whose file exists."""
    out = Path(output_dir)
    files = _column(summary, "heatmap_file").where(
        _column(summary, "heatmap_file").notna(), _column(summary, "heatmap_path")
    )
    exists = {f: (out / f).is_file() for f in files.dropna().unique()}
    return files.map(lambda f: isinstance(f, str) and exists[f]).to_numpy(bool)


def load_heatmaps(
    output_dir: str | Path, rows: pd.DataFrame | Sequence[int] | None = None
) -> list[np.ndarray | None]:
    """The saved map (h,w) of each selected summary row, None where a row has none.

    `rows`: None for every row of summary.parquet, positions in it, or a frame of its rows
    (with heatmap_path / heatmap_file / heatmap_index). Maps in chunk files come back as
    read-only float16 views of the memory-mapped file; maps in .npy files as float32 arrays.
    """
    out = Path(output_dir)
    if rows is None or not isinstance(rows, pd.DataFrame):
        summary = pd.read_parquet(out / "summary.parquet", columns=MAP_COLUMNS)
        rows = summary if rows is None else summary.iloc[list(rows)]
    chunks: dict[str, np.ndarray | None] = {}
    maps = []
    for path, file, index in zip(*(_column(rows, c) for c in MAP_COLUMNS)):
        if isinstance(file, str):
            if file not in chunks:
                chunks[file] = _open(out / file)
            chunk = chunks[file]
            maps.append(None if chunk is None else chunk[int(index)])
        elif isinstance(path, str):
            maps.append(read_map(out / path))
        else:
            maps.append(None)
    return maps


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-null where a summary from before the chunk format lacks it."""
    return frame[name] if name in frame.columns else pd.Series(None, index=frame.index)


def _open(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
