"""compare_runs: join two audits, measure what changed per row and per class, write the files."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.compare.classes import ClassInputs, class_table
from pipeline.compare.html import class_pictures, row_pictures, write_compare_html
from pipeline.compare.rows import (
    MapMeasures,
    Run,
    cluster_ids,
    join_keys,
    measure_maps,
    open_run,
    row_frame,
)
from pipeline.compare.settings import CompareConfig, check_compare
from pipeline.compare.strategies import cluster_changes, join_flags_and_clusters
from pipeline.outputs import atomic_write, write_json

log = logging.getLogger(__name__)

ROW_COLUMNS = {  # compare.parquet, in order, with their pandas dtypes
    **{"id": "string", "occurrence": "int64", "rank": "int64", "side": "string"},
    **{"row_a": "Int64", "row_b": "Int64", "path": "string", "label": "string"},
    **{"class": "string", "status_a": "string", "status_b": "string"},
    **{"error_a": "string", "error_b": "string", "compared": "bool"},
    **{"pred_label_a": "string", "pred_label_b": "string", "pred_changed": "boolean"},
    **{"pred_score_a": "float64", "pred_score_b": "float64", "score_change": "float64"},
    **{"correct_a": "boolean", "correct_b": "boolean", "similarity": "float64"},
    **{"peak_shift": "float64", "centroid_shift": "float64"},
    **{"border_fraction_a": "float64", "border_fraction_b": "float64"},
    **{"border_fraction_change": "float64", "energy_in_box_a": "float64"},
    **{"energy_in_box_b": "float64", "energy_in_box_change": "float64"},
    **{"cam_entropy_change": "float64", "coverage_change": "float64"},
    **{"spread_change": "float64", "cam_mean_change": "float64", "cam_max_change": "float64"},
    **{"pointing_hit_a": "boolean", "pointing_hit_b": "boolean"},
    **{"cluster_a": "int64", "cluster_b": "int64"},
    **{"cluster_changed": "boolean"},
}
IGNORED = (  # run.json keys that change no result, or differ on every run
    "counts", "timing", "shards", "config.output_dir", "config.progress",
    "config.writer_threads", "config.resume", "config.data.num_parallel_calls",
    "config.data.prefetch", "config.max_error_rate",
)  # fmt: skip


@dataclass
class CompareResult:
    """What compare_runs wrote to output_dir, as tables."""

    output_dir: Path
    rows: pd.DataFrame  # compare.parquet
    classes: pd.DataFrame  # compare_classes.parquet
    record: dict  # compare.json
    html: Path  # compare.html


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differences(a: dict, b: dict) -> dict[str, list]:
    """run.json keys whose values differ between the runs: {key: [a, b]} (None: absent)."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if not k.startswith(IGNORED))
    return {k: [fa.get(k), fb.get(k)] for k in keys if fa.get(k) != fb.get(k)}


def default_output_dir(run_a: Path, run_b: Path) -> Path:
    """<RUN_B>/compare-vs-<name of RUN_A>: tonight's run keeps its comparison with last night's."""
    return Path(run_b) / f"compare-vs-{Path(run_a).resolve().name}"


def _group_by(cfg: CompareConfig, a: Run, b: Run) -> str:
    if cfg.group_by != "auto":
        return cfg.group_by
    labelled = a.summary["label_index"].notna().any() or b.summary["label_index"].notna().any()
    return "label" if labelled else "target"


def _measure(a: Run, b: Run, rows: pd.DataFrame, codes: np.ndarray, grid: int) -> MapMeasures:
    """The maps of the compared rows, spread back over every row (NaN elsewhere)."""
    sel = np.flatnonzero(rows["compared"].to_numpy(bool))
    pos_a, pos_b = rows["pos_a"].to_numpy()[sel], rows["pos_b"].to_numpy()[sel]
    part = measure_maps(a, b, pos_a, pos_b, codes[sel], grid)
    n = len(rows)
    full = [np.full((n, *x.shape[1:]), np.nan) for x in part[:3]]
    for target, source in zip(full, part[:3]):
        target[sel] = source
    valid = np.zeros(n, bool)
    valid[sel] = part.valid
    n_codes = max(int(codes.max(initial=-1)) + 1, 0)
    sums = [np.zeros((n_codes, grid, grid)) for _ in range(2)]
    for target, source in zip(sums, (part.sum_a, part.sum_b)):
        target[: len(source)] = source
    count = np.zeros(n_codes, np.int64)
    count[: len(part.count)] = part.count
    return MapMeasures(*full, *sums, count, valid)


def _box_area(run: Run, pos: np.ndarray) -> pd.Series:
    s = run.summary
    if not {"x0", "y0", "x1", "y1", "width", "height"} <= set(s.columns):
        return pd.Series(np.nan, index=range(len(pos)))
    take = s.reset_index(drop=True).reindex(np.where(pos >= 0, pos, len(s))).reset_index(drop=True)
    area = (take["x1"] - take["x0"]) * (take["y1"] - take["y0"]) / (take["width"] * take["height"])
    return area.astype(float).where(take["energy_in_box"].notna())


def _typed(rows: pd.DataFrame) -> pd.DataFrame:
    table = rows[list(ROW_COLUMNS)].copy()
    for col, dtype in ROW_COLUMNS.items():
        if dtype == "boolean":
            table[col] = table[col].map(lambda v: pd.NA if v is None or pd.isna(v) else bool(v))
        table[col] = table[col].astype(dtype)
    return table


def _write_parquet(table: pd.DataFrame, path: Path) -> None:
    """A table as Parquet, atomically; list columns stay lists of strings even when empty."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    for i, f in enumerate(arrow.schema):
        if f.type == pa.list_(pa.null()):
            arrow = arrow.set_column(i, f.name, arrow.column(i).cast(pa.list_(pa.string())))
    atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    output_dir: str | Path | None = None,
    cfg: CompareConfig | None = None,
) -> CompareResult:
    """Compare audit RUN_A (before) with RUN_B (after): compare.parquet, compare_classes.parquet,
    compare.json and compare.html in output_dir. ConfigError for a folder that is not an audit
    output or two runs without ids in common."""
    cfg = cfg or CompareConfig()
    check_compare(cfg)
    a, b = open_run(run_a), open_run(run_b)
    out = Path(output_dir or cfg.output_dir or default_output_dir(a.path, b.path))
    by = _group_by(cfg, a, b)
    keys = join_keys(a, b)
    rows = row_frame(a, b, keys, by)
    rows[["pos_a", "pos_b"]] = keys[["pos_a", "pos_b"]]
    first = (rows["rank"] == 0) & rows["class"].notna()
    names = sorted(rows.loc[first, "class"].unique())
    codes = np.where(first, rows["class"].map({n: i for i, n in enumerate(names)}), -1)
    codes = codes.astype(np.int64)
    maps = _measure(a, b, rows, codes, cfg.grid)
    rows["compared"] = maps.valid
    rows["similarity"] = maps.similarity
    ids = [cluster_ids(run, rows[f"pos_{s}"].to_numpy()) for run, s in ((a, "a"), (b, "b"))]
    clusters = cluster_changes(*ids, cfg.cluster_match, a.path, b.path)
    rows["cluster_changed"] = clusters.changed
    box = _box_area(a, rows["pos_a"].to_numpy())
    classes, means = class_table(ClassInputs(rows, codes, names, maps, box), cfg)
    classes = join_flags_and_clusters(classes, a.path, b.path, clusters)
    record = _record(a, b, rows, classes, cfg, by)
    return _write(out, a, b, rows, classes, means, record, cfg)


def _accuracy(correct: pd.Series) -> float | None:
    known = correct.dropna()
    return float(known.astype(float).mean()) if len(known) else None


def _record(
    a: Run, b: Run, rows: pd.DataFrame, classes: pd.DataFrame, cfg: CompareConfig, by: str
) -> dict:
    """compare.json: the runs, what differs between their run.json records, headline counts."""
    side = rows["side"]
    first = rows[(rows["rank"] == 0) & rows["correct_a"].notna() & rows["correct_b"].notna()]
    either = (rows["status_a"] == "error") | (rows["status_b"] == "error")
    order = classes.sort_values("drift", ascending=False, kind="stable")
    sim = rows["similarity"].dropna()
    counts = {
        "rows_a": len(a.summary),
        "rows_b": len(b.summary),
        "matched": int((side == "both").sum()),
        "a_only": int((side == "a_only").sum()),
        "b_only": int((side == "b_only").sum()),
        "compared": int(rows["compared"].sum()),
        "errors_a": int((rows["status_a"] == "error").sum()),
        "errors_b": int((rows["status_b"] == "error").sum()),
        "matched_with_an_error": int(((side == "both") & either).sum()),
        "pred_changed": int(rows["pred_changed"].fillna(False).astype(bool).sum()),
        "accuracy_a": _accuracy(first["correct_a"]),
        "accuracy_b": _accuracy(first["correct_b"]),
        "similarity_median": float(sim.median()) if len(sim) else None,
        "classes": len(classes),
        "drift_flagged": int(classes["drift_flagged"].sum()),
        "flags_gained": int((classes["flag_change"] == "gained").sum()),
        "flags_lost": int((classes["flag_change"] == "lost").sum()),
    }
    return {
        "run_a": str(a.path.resolve()),
        "run_b": str(b.path.resolve()),
        "differences": differences(a.record, b.record),
        "counts": counts,
        "drift_flagged": order.loc[order["drift_flagged"], "class"].tolist(),
        "similarity": "cosine",
        "grid": cfg.grid,
        "group_by": by,
        "settings": asdict(cfg),
    }


def _write(
    out: Path,
    a: Run,
    b: Run,
    rows: pd.DataFrame,
    classes: pd.DataFrame,
    means: dict,
    record: dict,
    cfg: CompareConfig,
) -> CompareResult:
    """The four files, pictures first (the class table records their paths)."""
    out.mkdir(parents=True, exist_ok=True)
    classes = class_pictures(out, classes, means, cfg.classes_shown)
    shown = row_pictures(out, a, b, rows, cfg.rows_shown)
    table = _typed(rows)
    _write_parquet(table, out / "compare.parquet")
    _write_parquet(classes, out / "compare_classes.parquet")
    write_json(out / "compare.json", record)
    page = write_compare_html(out, record, classes, shown, rows)
    log.info(
        "compare: %d rows matched, %d classes drift-flagged -> %s",
        record["counts"]["matched"],
        record["counts"]["drift_flagged"],
        page,
    )
    return CompareResult(out, table, classes, record, page)
