"""Read and validate image manifests (CSV, Parquet, JSON Lines) into one clean table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError

BOX_COLUMNS = ["x0", "y0", "x1", "y1"]
READERS = {
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""]),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, na_values=[""]),
    ".parquet": pd.read_parquet,
    ".pq": pd.read_parquet,
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".ndjson": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: pd.read_json(p, lines=True, dtype=False),
}


def _text(value: object) -> str | None:
    """A cell as text, or None when empty/missing."""
    if value is None or (np.isscalar(value) and pd.isna(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest into a table with one row per manifest row, in order.

    Columns: row, id, path (resolved; "" when the cell is empty), manifest_path (as written),
    label, group, x0..y1 (float, NaN if absent). Raises ConfigError when the file cannot be
    read or has no `path` column; problems of single rows surface later as error rows.
    """
    path = Path(path).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(
            f"manifest {path}: unknown format {path.suffix!r}; "
            "expected .csv, .tsv, .parquet or .jsonl"
        )
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    try:
        raw = reader(path)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read manifest {path}: {first}") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    if "path" not in raw.columns:
        raise ConfigError(
            f"manifest {path} has no 'path' column; "
            f"columns are: {', '.join(raw.columns) or '(none)'}"
        )
    base = path.resolve().parent
    n = len(raw)
    paths = [_text(v) for v in raw["path"]]
    table = pd.DataFrame({"row": np.arange(n, dtype=np.int64)})
    table["path"] = [str(base / p) if p else "" for p in paths]
    table["manifest_path"] = [p or "" for p in paths]
    ids = [_text(v) for v in raw["id"]] if "id" in raw.columns else [None] * n
    table["id"] = [
        i if i is not None else (p or f"row-{r}") for r, (i, p) in enumerate(zip(ids, paths))
    ]
    for col in ("label", "group"):  # object columns: None stays None (not NaN) under pandas 3
        values = [_text(v) for v in raw[col]] if col in raw.columns else [None] * n
        table[col] = pd.Series(values, dtype=object)
    for col in BOX_COLUMNS:
        values = raw[col] if col in raw.columns else [None] * n
        table[col] = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(
            float
        )
    return table


def resolve_labels(
    labels: pd.Series, class_names: list[str]
) -> tuple[np.ndarray, list[str | None]]:
    """Label cells (name or index) -> (label_index (N,) int32 with -1 for none, warnings)."""
    lookup: dict[str, int] = {}
    for i, name in enumerate(class_names):
        lookup.setdefault(name, i)  # a name two classes share means the first of them
    index = np.full(len(labels), -1, np.int32)
    warnings: list[str | None] = [None] * len(labels)
    for i, label in enumerate(_text(v) for v in labels):
        if label is None:
            continue
        if label in lookup:
            index[i] = lookup[label]
        elif label.isdecimal() and int(label) < len(class_names):
            index[i] = int(label)
        else:
            warnings[i] = f"label {label!r} is not a class name or index of the model"
    return index, warnings
