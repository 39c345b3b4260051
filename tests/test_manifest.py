"""Manifests: formats, path resolution, optional columns, label resolution, clear failures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.manifest import read_manifest, resolve_labels

ROWS = pd.DataFrame(
    {
        "path": ["a.png", "sub/b.jpg", "/abs/c.png", ""],
        "id": ["first", None, "third", "fourth"],
        "label": ["cat", "1", None, "dog"],
        "x0": [1, None, 3, None],
        "y0": [2, None, 4, None],
        "x1": [10, None, 30, None],
        "y1": [20, None, 40, None],
        "group": ["g1", "g2", None, "g1"],
    }
)


def _write(df: pd.DataFrame, path):
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("ext", [".csv", ".parquet", ".jsonl"])
def test_formats_read_the_same(tmp_path, ext):
    table = read_manifest(_write(ROWS, tmp_path / f"m{ext}"))
    assert table["row"].tolist() == [0, 1, 2, 3]
    assert table["path"].tolist() == [
        str(tmp_path / "a.png"),
        str(tmp_path / "sub/b.jpg"),
        "/abs/c.png",
        "",
    ]
    assert table["id"].tolist() == ["first", "sub/b.jpg", "third", "fourth"]  # default: the path
    assert table["label"].tolist() == ["cat", "1", None, "dog"]
    assert table["group"].tolist() == ["g1", "g2", None, "g1"]
    np.testing.assert_array_equal(table["x1"].to_numpy(), [10, np.nan, 30, np.nan])


def test_missing_path_column_fails_clearly(tmp_path):
    path = _write(ROWS.drop(columns=["path"]), tmp_path / "m.csv")
    with pytest.raises(ConfigError, match="no 'path' column; columns are: id, label"):
        read_manifest(path)


def test_unreadable_and_missing_manifests(tmp_path):
    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.parquet"
    bad.write_text("this is not parquet")
    with pytest.raises(ConfigError, match="cannot read manifest"):
        read_manifest(bad)
    with pytest.raises(ConfigError, match="unknown format '.xlsx'"):
        read_manifest(tmp_path / "m.xlsx")


def test_labels_by_name_or_index_with_warnings():
    index, warnings = resolve_labels(
        pd.Series(["cat", "1", None, "zebra", "7"]), ["cat", "dog", "bird"]
    )
    assert index.tolist() == [0, 1, -1, -1, -1]
    assert warnings[:3] == [None, None, None]
    assert "'zebra' is not a class name" in warnings[3] and "'7'" in warnings[4]


def test_nullable_parquet_missing_cells_are_missing_not_text(tmp_path):
    frame = ROWS.convert_dtypes()  # pandas' nullable dtypes: missing cells are pd.NA
    frame.loc[1, "path"] = pd.NA
    frame.to_parquet(tmp_path / "m.parquet")
    table = read_manifest(tmp_path / "m.parquet")
    assert table["path"][1] == "" and table["label"][2] is None and table["group"][2] is None
    assert "<NA>" not in table.astype(str).to_string()


def test_unicode_digits_and_duplicate_names():
    index, warnings = resolve_labels(pd.Series(["²", "crane", "1"]), ["crane", "bird", "crane"])
    assert index.tolist() == [-1, 0, 1]  # '²' is no index; a shared name means the first class
    assert "'²'" in warnings[0]
