"""The strategy audit: cluster each class's maps, describe and flag every cluster (no TensorFlow).

Writes clusters.parquet and each cluster's mean map; hands back the `cluster` column of the
summary and what the class table and the report need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import StrategiesConfig
from pipeline.heatmaps import has_map, load_heatmaps
from pipeline.outputs import resize_map, safe_name, save_mean_map
from pipeline.report.aggregate import STATS, aggregate, grid_cell
from pipeline.report.flags import cluster_flags
from pipeline.report.strategies import ClassStrategies, cluster_classes

log = logging.getLogger(__name__)
TEMPORARY = ["rest", "run_cam_max_median"]  # flag inputs, not written


@dataclass
class StrategyAudit:
    cluster: np.ndarray  # (N,) int32: each summary row's cluster, -1 where none
    clusters: pd.DataFrame  # one row per (class, cluster): clusters.parquet
    found: list[ClassStrategies]


def load_maps(out: Path, rows: pd.DataFrame) -> np.ndarray:
    """The saved maps of these summary rows (n,h,w) float32; a missing or unreadable map
    counts as all zero (logged), a map of another shape is resized to the first's."""
    maps = []
    for row_id, heat in zip(rows["id"], load_heatmaps(out, rows)):
        if heat is None:
            log.warning("strategies: map of row %s unreadable; taken as empty", row_id)
            heat = np.zeros((1, 1), np.float32)
        maps.append(np.asarray(heat, np.float32))
    return np.stack([resize_map(m, maps[0].shape) for m in maps])


def strategy_audit(
    summary: pd.DataFrame,
    key: pd.Series,
    out: Path,
    cfg: StrategiesConfig,
    seed: int,
    names: dict[int, str],
    size: tuple[int, int],
) -> StrategyAudit:
    """Cluster every class with at least cfg.min_class_n ok rows that have a saved map."""
    usable = (
        (summary["status"] == "ok")
        & key.notna()
        & (summary["rank"].fillna(0) == 0)  # target=topk: the prediction's map, not runners-up
        & has_map(out, summary)
    )
    keys = np.where(usable, key.fillna(-1), -1).astype(np.int64)  # (N,)
    if not cfg.enabled or not usable.any():
        if cfg.enabled:
            log.info("strategies: no saved maps to cluster (heatmaps.enabled=false?)")
        return StrategyAudit(np.full(len(summary), -1, np.int32), empty_table(), [])
    found = cluster_classes(
        keys,
        lambda rows: load_maps(out, summary.iloc[rows]),
        cfg.min_class_n,
        cfg.max_clusters,
        cfg.neighbors,
        cfg.grid,
        seed,
    )
    cluster = np.full(len(summary), -1, np.int32)
    cells = (grid_cell(summary["peak_x"]), grid_cell(summary["peak_y"]))  # the run's layer grid
    tables = []
    for result in found:
        cluster[result.rows] = result.labels
        tables.append(describe_clusters(summary, result, out, names, size, cells, cfg))
    table = pd.concat(tables, ignore_index=True) if tables else empty_table()
    table["cluster"] = table["cluster"].astype("int32")
    table["run_cam_max_median"] = float(summary.loc[usable, "cam_max"].median())
    if len(table):
        table = table.join(cluster_flags(table, cfg))
    log.info("strategies: %d classes clustered into %d clusters", len(found), len(table))
    return StrategyAudit(cluster, table.drop(columns=TEMPORARY, errors="ignore"), found)


def describe_clusters(
    summary: pd.DataFrame,
    result: ClassStrategies,
    out: Path,
    names: dict[int, str],
    size: tuple[int, int],
    cells: tuple[float, float],
    cfg: StrategiesConfig,
) -> pd.DataFrame:
    """One row per cluster of one class: statistics, geometry, mean map, typical examples.
    `cells`: the (x, y) cell size of the layer's grid the peaks were taken on."""
    rows = summary.iloc[result.rows]
    labels = pd.Series(result.labels, index=rows.index)
    table = aggregate(rows, labels, [], False, cells).reset_index(names="cluster")
    cls = result.class_index
    table.insert(0, "class_index", cls)
    table.insert(1, "class", names.get(cls, str(cls)))
    table["share"] = table["n"] / len(rows)
    table["radius"] = result.radius
    table["separation"] = result.separation
    table["rest"] = [_rest(rows, result, c, cells) for c in table["cluster"]]
    table["tightness"] = [  # how alike its maps are, against the class's other images'
        r / max(rest["radius"], 1e-9) if rest is not None else np.nan
        for r, rest in zip(table["radius"], table["rest"])
    ]
    folder = out / "classes" / safe_name(cls, names.get(cls, str(cls)))
    stems = [folder / f"cluster-{c}" for c in range(len(result.mean_maps))]
    for mean, stem in zip(result.mean_maps, stems):  # at input size, like the class mean map
        save_mean_map(resize_map(mean, size), stem)
    table["mean_map_path"] = [str(p.with_suffix(".npy").relative_to(out)) for p in stems]
    table["mean_map_png"] = [str(p.with_suffix(".png").relative_to(out)) for p in stems]
    typical = [
        np.argsort(result.typicality[result.labels == c], kind="stable") for c in table["cluster"]
    ]
    members = [rows[result.labels == c] for c in table["cluster"]]
    table["examples"] = [m["id"].iloc[t[: cfg.examples]].tolist() for m, t in zip(members, typical)]
    table["example_rows"] = [
        m["row"].iloc[t[: cfg.examples]].astype(int).tolist() for m, t in zip(members, typical)
    ]
    return table


def _rest(
    rows: pd.DataFrame, result: ClassStrategies, cluster: int, cells: tuple[float, float]
) -> pd.Series | None:
    """What a cluster is compared with: the class's other rows that the model got right (all
    its other rows where there are no labels), taken together: peak spread and spot, border and
    in-box mass, and their mean distance to their own cluster's centre. None if there are none.
    """
    right = rows["correct"].astype("boolean").fillna(True).to_numpy(bool)  # unlabelled: kept
    others = (result.labels != cluster) & right
    if not others.any():
        return None
    part = rows[others]
    stats = aggregate(part, pd.Series(0, index=part.index), [], False, cells).iloc[0]
    stats["radius"] = float(result.typicality[others].mean())
    return stats


def empty_table() -> pd.DataFrame:
    """clusters.parquet with no rows (no class had enough rows, or strategies are off)."""
    floats = ["share", "accuracy", "pred_score_mean", "peak_x_mean", "peak_y_mean"]
    floats += ["peak_spread", "peak_share", "radius", "separation", "tightness", "suspicion"]
    floats += [f"{stat}_mean" for stat in STATS]
    table = pd.DataFrame({column: pd.Series(dtype="float64") for column in floats})
    table.insert(0, "class_index", pd.Series(dtype="int64"))
    table.insert(1, "class", pd.Series(dtype="string"))
    table.insert(2, "cluster", pd.Series(dtype="int32"))
    table.insert(3, "n", pd.Series(dtype="int64"))
    for column in ("mean_map_path", "mean_map_png"):
        table[column] = pd.Series(dtype="string")
    table["flagged"] = pd.Series(dtype="bool")
    for column in ("examples", "example_rows", "flag_reasons"):
        table[column] = pd.Series(dtype="object")
    return table
