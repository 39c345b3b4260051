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
from PIL import Image

from pipeline.aggregate import aggregate
from pipeline.config import StrategiesConfig
from pipeline.flags import cluster_flags
from pipeline.outputs import jet_png, safe_name, save_heatmap
from pipeline.strategies import ClassStrategies, cluster_classes

log = logging.getLogger(__name__)
TEMPORARY = ["rest", "run_cam_max_median"]  # flag inputs, not written


@dataclass
class StrategyAudit:
    cluster: np.ndarray  # (N,) int32: each summary row's cluster, -1 where none
    clusters: pd.DataFrame  # one row per (class, cluster): clusters.parquet
    found: list[ClassStrategies]


def load_maps(out: Path, rels: list[str]) -> np.ndarray:
    """The saved maps (n,h,w) float32; a map of another shape is resized to the first's."""
    maps = [np.load(out / rel).astype(np.float32) for rel in rels]
    h, w = maps[0].shape
    return np.stack(
        [
            m
            if m.shape == (h, w)
            else np.asarray(Image.fromarray(m, "F").resize((w, h), Image.BILINEAR))
            for m in maps
        ]
    )


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
    usable = (summary["status"] == "ok") & key.notna() & summary["heatmap_path"].notna()
    keys = np.where(usable, key.fillna(-1), -1).astype(np.int64)  # (N,)
    if not cfg.enabled or not usable.any():
        return StrategyAudit(np.full(len(summary), -1, np.int32), empty_table(), [])
    rels = summary["heatmap_path"].to_numpy()
    found = cluster_classes(
        keys,
        lambda rows: load_maps(out, list(rels[rows])),
        cfg.min_class_n,
        cfg.max_clusters,
        cfg.neighbors,
        cfg.grid,
        seed,
    )
    cluster = np.full(len(summary), -1, np.int32)
    tables = []
    for result in found:
        cluster[result.rows] = result.labels
        tables.append(describe_clusters(summary, result, out, names, size, cfg))
    table = pd.concat(tables, ignore_index=True) if tables else empty_table()
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
    cfg: StrategiesConfig,
) -> pd.DataFrame:
    """One row per cluster of one class: statistics, geometry, mean map, typical examples."""
    rows = summary.iloc[result.rows]
    labels = pd.Series(result.labels, index=rows.index)
    table = aggregate(rows, labels, [], by_label=False).reset_index(names="cluster")
    cls = result.class_index
    table.insert(0, "class_index", cls)
    table.insert(1, "class", names.get(cls, str(cls)))
    table["share"] = table["n"] / len(rows)
    table["radius"] = result.radius
    table["separation"] = result.separation
    table["rest"] = [_rest(rows, result, c) for c in table["cluster"]]
    table["tightness"] = [  # how alike its maps are, against the class's other images'
        r / max(rest["radius"], 1e-9) if rest is not None else np.nan
        for r, rest in zip(table["radius"], table["rest"])
    ]
    folder = out / "classes" / safe_name(cls, names.get(cls, str(cls)))
    paths = [
        _save_mean_map(m, folder / f"cluster-{c}", size) for c, m in enumerate(result.mean_maps)
    ]
    table["mean_map_path"] = [str(p.with_suffix(".npy").relative_to(out)) for p in paths]
    table["mean_map_png"] = [str(p.with_suffix(".png").relative_to(out)) for p in paths]
    typical = [
        np.argsort(result.typicality[result.labels == c], kind="stable") for c in table["cluster"]
    ]
    members = [rows[result.labels == c] for c in table["cluster"]]
    table["examples"] = [m["id"].iloc[t[: cfg.examples]].tolist() for m, t in zip(members, typical)]
    table["example_rows"] = [
        m["row"].iloc[t[: cfg.examples]].astype(int).tolist() for m, t in zip(members, typical)
    ]
    return table


def _rest(rows: pd.DataFrame, result: ClassStrategies, cluster: int) -> pd.Series | None:
    """What a cluster is compared with: the class's other rows that the model got right (all
    its other rows where there are no labels), taken together: peak spread and spot, border and
    in-box mass, and their mean distance to their own cluster's centre. None if there are none.
    """
    others = (result.labels != cluster) & (rows["correct"].astype("boolean") != False).to_numpy()  # noqa: E712
    if not others.any():
        return None
    part = rows[others]
    stats = aggregate(part, pd.Series(0, index=part.index), [], by_label=False).iloc[0]
    stats["radius"] = float(result.typicality[others].mean())
    return stats


def _save_mean_map(mean: np.ndarray, stem: Path, size: tuple[int, int]) -> Path:
    """A cluster's mean map at input size, as .npy and a jet PNG."""
    if mean.shape != tuple(size):
        mean = np.asarray(Image.fromarray(mean, "F").resize(size[::-1], Image.BILINEAR))
    save_heatmap(stem.with_suffix(".npy"), np.clip(mean, 0.0, 1.0))
    jet_png(mean, stem.with_suffix(".png"))
    return stem


def empty_table() -> pd.DataFrame:
    """clusters.parquet with no rows (no class had enough rows, or strategies are off)."""
    return pd.DataFrame(
        {
            "class_index": pd.Series(dtype="int64"),
            "class": pd.Series(dtype="object"),
            "cluster": pd.Series(dtype="int32"),
            "n": pd.Series(dtype="int64"),
            "share": pd.Series(dtype="float64"),
            "flagged": pd.Series(dtype="bool"),
            "flag_reasons": pd.Series(dtype="object"),
            "suspicion": pd.Series(dtype="float64"),
        }
    )
