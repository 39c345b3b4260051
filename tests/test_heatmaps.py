"""load_heatmaps reads any selection of rows in either format, and older summaries too."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.heatmaps import chunk_file, has_map, load_heatmaps, write_chunk
from pipeline.outputs import save_heatmap
from pipeline.summary import summary_table


def _summary(out, rows: dict) -> pd.DataFrame:
    table = summary_table({"row": list(range(len(rows["id"]))), **rows})
    table.to_pandas().to_parquet(out / "summary.parquet")
    return pd.read_parquet(out / "summary.parquet")


def test_chunks_files_and_missing_maps(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((4, 3, 5)).astype(np.float32)
    write_chunk(tmp_path / chunk_file(0, 4), maps)
    save_heatmap(tmp_path / "heatmaps" / "x.npy", maps[3])
    summary = _summary(
        tmp_path,
        {
            "id": ["a", "b", "c", "d", "e"],
            "heatmap_file": ["heatmaps/chunk-000000.npy", None, "heatmaps/chunk-000000.npy",
                             None, "heatmaps/chunk-000009.npy"],
            "heatmap_index": [2, None, 0, None, 0],
            "heatmap_path": [None, "heatmaps/x.npy", None, None, None],
        },
    )  # fmt: skip
    got = load_heatmaps(tmp_path)
    np.testing.assert_allclose(got[0], maps[2], atol=5e-4)
    assert got[0].dtype == np.float16 and isinstance(got[0].base, np.memmap)
    np.testing.assert_array_equal(got[1], maps[3])  # files: float32, exact
    np.testing.assert_allclose(got[2], maps[0], atol=5e-4)
    assert got[3] is None and got[4] is None  # no map; a chunk file that is not there
    assert has_map(tmp_path, summary).tolist() == [True, True, True, False, False]
    assert [m is None for m in load_heatmaps(tmp_path, [4, 1])] == [True, False]
    picked = load_heatmaps(tmp_path, summary.iloc[[2, 0]])
    np.testing.assert_array_equal(picked[0], got[2])
    np.testing.assert_array_equal(picked[1], got[0])


def test_a_summary_from_before_the_chunk_format(tmp_path):
    save_heatmap(tmp_path / "heatmaps" / "a.npy", np.ones((2, 2), np.float32))
    old = pd.DataFrame({"id": ["a", "b"], "heatmap_path": ["heatmaps/a.npy", None]})
    assert has_map(tmp_path, old).tolist() == [True, False]
    got = load_heatmaps(tmp_path, old)
    assert got[0].tolist() == [[1, 1], [1, 1]] and got[1] is None


def test_chunk_names_follow_the_manifest_blocks():
    assert chunk_file(0, 256) == "heatmaps/chunk-000000.npy"
    assert chunk_file(512, 256) == "heatmaps/chunk-000002.npy"  # a shard's third block
