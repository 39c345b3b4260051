"""Per class: what changed between two runs, a drift score, and the reasons in words."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from pipeline.compare.regions import (
    BOX,
    REGIONS,
    Move,
    Region,
    largest_move,
    place_of,
    region_areas,
)
from pipeline.compare.rows import MapMeasures, cosine
from pipeline.compare.settings import CompareConfig


class ClassInputs(NamedTuple):
    """What the class table is computed from (rows: compare.parquet's frame)."""

    rows: pd.DataFrame  # with class, rank, compared, correct_a/b, peak/centroid/stat columns
    codes: np.ndarray  # (n,) class code of each row, -1: none or not rank 0
    names: list[str]  # class name of each code
    maps: MapMeasures
    box_area: pd.Series  # (n,) share of the image the row's box covers (NaN: no box)


def _rms_spread(x: pd.Series, y: pd.Series) -> float:
    """RMS distance of points from their mean (NaN for none)."""
    keep = x.notna() & y.notna()
    if not keep.any():
        return np.nan
    x, y = x[keep].astype(float), y[keep].astype(float)
    return float(np.sqrt(((x - x.mean()) ** 2 + (y - y.mean()) ** 2).mean()))


def _accuracy(correct: pd.Series) -> float:
    known = correct.dropna()
    return float(known.astype(float).mean()) if len(known) else np.nan


def _region_shares(part: pd.DataFrame, sh: np.ndarray, side: str) -> np.ndarray:
    """(R or R+1,) mean region shares of the class's compared rows, plus the box share when
    the rows have boxes (from the summary's energy_in_box)."""
    base = (
        np.nanmean(sh, axis=0)
        if len(sh) and np.isfinite(sh).any()
        else np.full(len(REGIONS), np.nan)
    )
    box = part[f"energy_in_box_{side}"].astype(float)
    return np.append(base, box.mean()) if box.notna().any() else base


def class_stats(inputs: ClassInputs, code: int) -> dict:
    """The measured changes of one class (before drift and reasons)."""
    rows, maps = inputs.rows, inputs.maps
    mine = inputs.codes == code
    part = rows[mine & rows["compared"].to_numpy(bool)]
    both = part[part["correct_a"].notna() & part["correct_b"].notna()]
    sim = part["similarity"].astype(float)
    count = maps.count[code]
    mean_a, mean_b = (maps.sum_a[code] / max(count, 1)), (maps.sum_b[code] / max(count, 1))
    sel = mine & rows["compared"].to_numpy(bool)
    regions_a = _region_shares(part, maps.shares_a[sel], "a")
    regions_b = _region_shares(part, maps.shares_b[sel], "b")
    stats = {
        "n_compared": len(part),
        "n_a_only": int((rows.loc[mine, "side"] == "a_only").sum()),
        "n_b_only": int((rows.loc[mine, "side"] == "b_only").sum()),
        "n_errors_a": int((rows.loc[mine, "status_a"] == "error").sum()),
        "n_errors_b": int((rows.loc[mine, "status_b"] == "error").sum()),
        "n_pred_changed": int(part["pred_changed"].astype(bool).sum()),
        "accuracy_a": _accuracy(both["correct_a"]),
        "accuracy_b": _accuracy(both["correct_b"]),
        "similarity_mean": float(sim.mean()) if len(sim) else np.nan,
        "similarity_median": float(sim.median()) if len(sim) else np.nan,
        "mean_map_similarity": float(cosine(mean_a[None], mean_b[None])[0]) if count else np.nan,
        "peak_shift_median": float(part["peak_shift"].median()) if len(part) else np.nan,
    }
    for stat in ("border_fraction", "energy_in_box"):
        for side in ("a", "b"):
            stats[f"{stat}_{side}"] = float(part[f"{stat}_{side}"].astype(float).mean())
    for side in ("a", "b"):
        stats[f"peak_spread_{side}"] = _rms_spread(part[f"peak_x_{side}"], part[f"peak_y_{side}"])
        peak = (part[f"peak_x_{side}"].astype(float), part[f"peak_y_{side}"].astype(float))
        stats[f"_peak_{side}"] = (peak[0].median(), peak[1].median())
    for stat in ("cam_entropy", "coverage", "spread", "cam_mean", "cam_max"):
        stats[f"{stat}_change"] = float(part[f"{stat}_change"].astype(float).mean())
    for side in ("a", "b"):  # the pointing game's hit rate (rows with a box)
        hits = part[f"pointing_hit_{side}"].dropna()
        stats[f"pointing_rate_{side}"] = float(hits.astype(float).mean()) if len(hits) else np.nan
    stats["centroid_shift_median"] = float(part["centroid_shift"].median()) if len(part) else np.nan
    return {**stats, "_regions": (regions_a, regions_b), "_means": (mean_a, mean_b)}


def _changes(s: dict) -> dict:
    """The a -> b changes of a class's statistics (b - a)."""
    return {
        "accuracy_change": s["accuracy_b"] - s["accuracy_a"],
        "border_fraction_change": s["border_fraction_b"] - s["border_fraction_a"],
        "energy_in_box_change": s["energy_in_box_b"] - s["energy_in_box_a"],
        "peak_spread_change": s["peak_spread_b"] - s["peak_spread_a"],
        "pointing_rate_change": s["pointing_rate_b"] - s["pointing_rate_a"],
    }


def _regions_of(s: dict, box_area: float, grid: int) -> tuple[list[Region], np.ndarray]:
    """The regions a class's shares cover (the object box too when its rows have boxes) and
    their areas."""
    regions = list(REGIONS) + ([BOX] if len(s["_regions"][0]) > len(REGIONS) else [])
    areas = region_areas(grid)
    if len(regions) > len(REGIONS):
        areas = np.append(areas, box_area if np.isfinite(box_area) else 1.0)
    return regions, areas


def drift_of(s: dict, box_area: float, cfg: CompareConfig) -> tuple[float, dict, list, Move]:
    """(drift, components, reasons, the largest move): each component is a change over its
    threshold; drift is the largest, and a reason is written for every component at 1 or more."""
    regions, areas = _regions_of(s, box_area, cfg.grid)
    share_a, share_b = s["_regions"]
    shift = np.abs(share_b - share_a)
    parts = {
        "map": (1.0 - s["mean_map_similarity"]) / cfg.map_change,
        "region": float(np.nanmax(shift)) / cfg.region_shift if np.isfinite(shift).any() else 0,
        "peaks": abs(s["peak_spread_change"]) / cfg.peak_spread_change,
        "accuracy": abs(s["accuracy_change"]) / cfg.accuracy_change,
    }
    parts = {k: float(v) if np.isfinite(v) else 0.0 for k, v in parts.items()}
    reasons = []
    move = largest_move(share_a, share_b, areas, regions)
    if parts["map"] >= 1 or parts["region"] >= 1:
        similar = f"cosine similarity of the mean maps {s['mean_map_similarity']:.2f}"
        reasons.append(
            f"{move.words()} ({similar})" if move else f"the mean map changed: {similar}"
        )
    if parts["peaks"] >= 1:
        gathered = s["peak_spread_change"] < 0
        how = f"gathered on {place_of(*s['_peak_b'])}" if gathered else "scattered"
        how += "" if gathered else f" (from {place_of(*s['_peak_a'])})"
        reasons.append(
            f"the peaks {how}: their spread {s['peak_spread_b']:.2f} of the image side vs "
            f"{s['peak_spread_a']:.2f} before"
        )
    if parts["accuracy"] >= 1:
        reasons.append(f"accuracy {s['accuracy_b']:.0%} vs {s['accuracy_a']:.0%} before")
    return max(parts.values(), default=0.0), parts, reasons, move


def class_table(inputs: ClassInputs, cfg: CompareConfig) -> tuple[pd.DataFrame, dict]:
    """One row per class (by name) with its changes, drift, drift_flagged and reasons; and the
    class mean maps on the common grid by class name ({name: (mean_a, mean_b)})."""
    records, means = [], {}
    for code, name in enumerate(inputs.names):
        s = class_stats(inputs, code)
        s.update(_changes(s))
        box_area = float(inputs.box_area[inputs.codes == code].mean())
        drift, parts, reasons, move = drift_of(s, box_area, cfg)
        means[name] = s["_means"]
        s = {k: v for k, v in s.items() if not k.startswith("_")}
        eligible = s["n_compared"] >= cfg.min_class_n
        records.append(
            {
                "class": name,
                **s,
                "moved_from": move.frm.name if move and move.frm else None,
                "moved_to": move.to.name if move else None,
                "moved_share_a": move.share_a if move else np.nan,
                "moved_share_b": move.share_b if move else np.nan,
                **{f"drift_{k}": v for k, v in parts.items()},
                "drift": drift,
                "drift_flagged": bool(eligible and drift >= 1.0),
                "drift_reasons": reasons if eligible and drift >= 1.0 else [],
            }
        )
    return pd.DataFrame(records), means
