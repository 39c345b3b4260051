"""The rows of a comparison: two runs' summaries joined on (id, occurrence, rank), and per row
how the prediction and the map changed. Maps are read with load_heatmaps and resampled to one
common grid, so runs at different layers or resolutions compare."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.compare.regions import region_masks, shares
from pipeline.errors import ConfigError
from pipeline.heatmaps import has_map, load_heatmaps
from pipeline.outputs import resize_map
from pipeline.report.audit import class_names_of, load_run

KEYS = ["id", "occurrence", "rank"]
STATS = ("border_fraction", "energy_in_box", "cam_entropy", "coverage", "spread", "cam_mean")
STATS += ("cam_max",)  # every attention statistic of the summary but the peak (own columns)
CHUNK = 2048  # rows whose maps are held at once


class Run(NamedTuple):
    """One audit's output folder, read."""

    path: Path
    summary: pd.DataFrame
    record: dict  # run.json ({} when missing)
    names: dict[int, str]  # class index -> unique name


def open_run(path: str | Path) -> Run:
    """A finished audit (single or merged sharded run); ConfigError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder; expected a gradcam-audit output folder")
    summary, record = load_run(path)
    missing = {"id", "status", "row"} - set(summary.columns)
    if missing:
        raise ConfigError(f"{path}/summary.parquet lacks {sorted(missing)}: not an audit summary")
    return Run(path, summary, record, class_names_of(summary, record))


def _keys(summary: pd.DataFrame) -> pd.DataFrame:
    """(id, occurrence, rank, pos): occurrence numbers repeated ids in manifest order."""
    keys = pd.DataFrame(
        {
            "id": summary["id"].astype(str).to_numpy(),
            "rank": summary["rank"].fillna(0).astype("int64").to_numpy(),
            "pos": np.arange(len(summary)),
        }
    )
    keys["occurrence"] = keys.groupby(["id", "rank"]).cumcount().astype("int64")
    return keys


def join_keys(a: Run, b: Run) -> pd.DataFrame:
    """Every row of either run once: KEYS, pos_a, pos_b (-1 where absent), side
    (both / a_only / b_only), in A's order, then B's rows A lacks in B's order."""
    joined = _keys(a.summary).merge(
        _keys(b.summary), on=KEYS, how="outer", suffixes=("_a", "_b"), indicator=True
    )
    if not (joined["_merge"] == "both").any():
        raise ConfigError(
            f"no row ids in common between {a.path} and {b.path} "
            f"(first ids: {a.summary['id'].iloc[0] if len(a.summary) else '-'!s} and "
            f"{b.summary['id'].iloc[0] if len(b.summary) else '-'!s}); compare audits of the "
            "same images"
        )
    joined["side"] = joined.pop("_merge").map(
        {"both": "both", "left_only": "a_only", "right_only": "b_only"}
    )
    joined["side"] = joined["side"].astype(str)
    for col in ("pos_a", "pos_b"):
        joined[col] = joined[col].fillna(-1).astype("int64")
    order = np.where(joined["pos_a"] >= 0, joined["pos_a"], len(a.summary) + joined["pos_b"])
    return joined.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def pick(summary: pd.DataFrame, pos: np.ndarray, column: str) -> pd.Series:
    """summary[column] at positions pos (-1: missing -> null), indexed 0..len(pos)-1."""
    values = summary[column].reset_index(drop=True)
    taken = values.reindex(np.where(pos >= 0, pos, len(values)))
    return taken.reset_index(drop=True)


def class_of(run: Run, pos: np.ndarray, by: str) -> pd.Series:
    """The name of the class each row counts for in this run: its label or explained class."""
    index = pick(run.summary, pos, "label_index" if by == "label" else "target_index")
    return index.map(lambda i: None if pd.isna(i) else run.names.get(int(i), str(int(i))))


def cluster_ids(run: Run, pos: np.ndarray) -> pd.Series:
    """'<class>#<k>': each row's strategy cluster in this run (null: none), named by the class
    the run clustered it in (its report.group_by)."""
    by = run.record.get("config", {}).get("report", {}).get("group_by", "target")
    cls = class_of(run, pos, by)
    k = pick(run.summary, pos, "cluster") if "cluster" in run.summary.columns else None
    if k is None:
        return pd.Series([None] * len(pos), dtype=object)
    return pd.Series(
        [
            f"{c}#{int(v)}" if c is not None and pd.notna(v) and v >= 0 else None
            for c, v in zip(cls, k)
        ],
        dtype=object,
    )


def _on_grid(maps: list[np.ndarray | None], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps resampled to (n, grid, grid) (bilinear, antialiased when shrinking; >= 0) and
    which of them exist."""
    out = np.zeros((len(maps), grid, grid), np.float32)
    valid = np.zeros(len(maps), bool)
    for i, m in enumerate(maps):
        if m is not None:
            out[i] = np.clip(resize_map(np.asarray(m, np.float32), (grid, grid)), 0.0, None)
            valid[i] = True
    return out, valid


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) cosine similarity of maps (n,...) >= 0: 1 for the same shape at any scale, 0 for
    disjoint maps; two all-zero maps are alike (1), one all-zero map is like nothing (0)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    both = nx * ny
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(both > 0, (x * y).sum(axis=1) / np.where(both > 0, both, 1.0), 0.0)
    sim = np.where((nx == 0) & (ny == 0), 1.0, sim)
    return np.clip(np.round(sim, 12), 0.0, 1.0)  # rounded: the same map gives exactly 1


class MapMeasures(NamedTuple):
    """What the maps of the compared rows give: per row, and summed per class code."""

    similarity: np.ndarray  # (n,) cosine on the common grid; NaN where not compared
    shares_a: np.ndarray  # (n,R) share of each map's mass in each region (regions.REGIONS)
    shares_b: np.ndarray
    sum_a: np.ndarray  # (C,g,g) sums of the resampled maps of each class code's rows
    sum_b: np.ndarray
    count: np.ndarray  # (C,) rows summed
    valid: np.ndarray  # (n,) both maps were read


def measure_maps(
    a: Run, b: Run, pos_a: np.ndarray, pos_b: np.ndarray, codes: np.ndarray, grid: int
) -> MapMeasures:
    """Similarity, region shares and class sums of the rows at (pos_a, pos_b); codes (n,) is
    each row's class code (-1: none), chunk by chunk so memory stays bounded."""
    n, n_codes, masks = len(pos_a), int(codes.max(initial=-1)) + 1, region_masks(grid)
    sim = np.full(n, np.nan)
    sh_a, sh_b = np.full((n, len(masks)), np.nan), np.full((n, len(masks)), np.nan)
    sums = np.zeros((2, n_codes, grid, grid))
    count = np.zeros(n_codes, np.int64)
    valid = np.zeros(n, bool)
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        ga, va = _on_grid(load_heatmaps(a.path, a.summary.iloc[pos_a[part]]), grid)
        gb, vb = _on_grid(load_heatmaps(b.path, b.summary.iloc[pos_b[part]]), grid)
        ok = va & vb
        valid[part] = ok
        sim[part] = np.where(ok, cosine(ga, gb), np.nan)
        sh_a[part] = np.where(ok[:, None], shares(ga, masks), np.nan)
        sh_b[part] = np.where(ok[:, None], shares(gb, masks), np.nan)
        has = ok & (codes[part] >= 0)
        for side, g in enumerate((ga, gb)):
            np.add.at(sums[side], codes[part][has], g[has])
        np.add.at(count, codes[part][has], 1)
    return MapMeasures(sim, sh_a, sh_b, sums[0], sums[1], count, valid)


def ok_with_map(run: Run, pos: np.ndarray) -> np.ndarray:
    """(n,) the row exists, is ok and points to a stored map."""
    found = pos >= 0
    status = pick(run.summary, pos, "status").eq("ok").to_numpy(bool)
    stored = np.zeros(len(pos), bool)
    stored[found] = has_map(run.path, run.summary.iloc[pos[found]])
    return found & status & stored


SIDE_COLUMNS = ["status", "error", "pred_label", "pred_score", "correct", "peak_x", "peak_y"]
SIDE_COLUMNS += ["centroid_x", "centroid_y", "overlay_path", "pointing_hit", *STATS]


def row_frame(a: Run, b: Run, keys: pd.DataFrame, by: str) -> pd.DataFrame:
    """The joined rows (before the maps are read): keys, both sides' values, the changes that
    the summaries give (b - a; null unless both rows are ok) and `compared` (both have maps)."""
    pa_, pb_ = keys["pos_a"].to_numpy(), keys["pos_b"].to_numpy()
    f = keys[[*KEYS, "side"]].copy()
    f["row_a"] = pick(a.summary, pa_, "row").astype("Int64")
    f["row_b"] = pick(b.summary, pb_, "row").astype("Int64")
    for col in ("path", "label"):
        f[col] = pick(a.summary, pa_, col).where(pa_ >= 0, pick(b.summary, pb_, col))
    f["class"] = class_of(a, pa_, by).where(pa_ >= 0, class_of(b, pb_, by))
    f["class"] = f["class"].where(f["class"].notna(), class_of(b, pb_, by))
    for col in SIDE_COLUMNS:
        for side, run, pos in (("a", a, pa_), ("b", b, pb_)):
            f[f"{col}_{side}"] = pick(run.summary, pos, col) if col in run.summary else None
    both_ok = (f["status_a"] == "ok") & (f["status_b"] == "ok")
    f["compared"] = ok_with_map(a, pa_) & ok_with_map(b, pb_)
    f["pred_changed"] = (f["pred_label_a"] != f["pred_label_b"]).astype("boolean").where(both_ok)
    f["score_change"] = f["pred_score_b"].astype(float) - f["pred_score_a"].astype(float)
    for what in ("peak", "centroid"):
        dx = f[f"{what}_x_b"].astype(float) - f[f"{what}_x_a"].astype(float)
        dy = f[f"{what}_y_b"].astype(float) - f[f"{what}_y_a"].astype(float)
        f[f"{what}_shift"] = np.hypot(dx, dy)
    for stat in STATS:
        f[f"{stat}_change"] = f[f"{stat}_b"].astype(float) - f[f"{stat}_a"].astype(float)
    for side, run, pos in (("a", a, pa_), ("b", b, pb_)):
        k = pick(run.summary, pos, "cluster") if "cluster" in run.summary else None
        f[f"cluster_{side}"] = (k if k is not None else pd.Series(-1, index=f.index)).fillna(-1)
    return f
