"""Shortcut flags for classes and their strategy clusters, each against chance and the rest.

Every sign is compared with what the maps' own shape would give by chance, so a diffuse map is
never a sign of anything: a map spread evenly puts BORDER_CHANCE of its mass in the outer eighth
and a box's area share inside a box, and so does any map placed at random.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import ReportConfig, StrategiesConfig

BORDER_CHANCE = 1.0 - (1.0 - 2.0 / 8.0) ** 2  # area of the outer eighth (stats.BORDER): 0.4375
IDENTICAL = 1e-4  # a cluster radius below this: its maps are copies (duplicate images)


def _robust_outliers(values: pd.Series, eligible: pd.Series, cfg: ReportConfig) -> pd.DataFrame:
    """Leave-one-out robust z-score of each class against the other eligible classes."""
    rows = []
    for cls, value in values.items():
        others = values[eligible & (values.index != cls)].dropna()
        if pd.isna(value) or len(others) < 2 or not eligible[cls]:
            rows.append((cls, np.nan, np.nan))
            continue
        med = float(others.median())
        mad = max(1.4826 * float((others - med).abs().median()), cfg.mad_floor)
        rows.append((cls, (value - med) / mad, med))
    return pd.DataFrame(rows, columns=["cls", "z", "others"]).set_index("cls")


CLASS_CHECKS = [  # column, direction, gap key, chance test, reason
    (
        "energy_in_box_mean",
        -1,
        "min_gap",
        lambda row, cfg: row["energy_in_box_mean"] < row["box_area_mean"],
        "attention off the object: {v:.0%} of the map inside the box, below the {c:.0%} a map "
        "spread evenly would put there, vs {o:.0%} for other classes (robust z {z:.1f})",
    ),
    (
        "pointing_hit_mean",
        -1,
        "min_gap",
        lambda row, cfg: row["pointing_hit_mean"] < 0.5,
        "attention off the object: the peak is on the object in {v:.0%} of images vs {o:.0%} "
        "for other classes (robust z {z:.1f})",
    ),
    (
        "border_fraction_mean",
        +1,
        "min_gap",
        lambda row, cfg: row["border_fraction_mean"] >= BORDER_CHANCE + 0.1,
        "attention on the image border: {v:.0%} of the map in the outer eighth, above the "
        "{c:.0%} a map spread evenly would put there, vs {o:.0%} for other classes "
        "(robust z {z:+.1f})",
    ),
    (
        "peak_spread",
        -1,
        "fixed_min_gap",
        # fixed for real (most peaks at one spot), and not on the object (the objects sit still)
        lambda row, cfg: (
            row["peak_share"] >= cfg.fixed_share and not row["pointing_hit_mean"] >= 0.5
        ),
        "attention fixed in one place: the peak sits at ({x:.2f}, {y:.2f}) in nearly every "
        "image, spread {v:.3f} vs {o:.3f} for other classes (robust z {z:.1f})",
    ),
]


def class_flags(classes: pd.DataFrame, cfg: ReportConfig) -> list[list[str]]:
    """Reasons per class (in index order): outliers against the other classes and chance."""
    eligible = classes["n"] >= cfg.min_class_n
    reasons: dict[int, list[str]] = {c: [] for c in classes.index}
    for column, sign, gap_key, beyond_chance, text in CLASS_CHECKS:
        z = _robust_outliers(classes[column], eligible, cfg)
        for cls in classes.index:
            zc, others = z.loc[cls, "z"], z.loc[cls, "others"]
            row = classes.loc[cls]
            value = row[column]
            if pd.isna(zc) or sign * zc < cfg.z_threshold:
                continue
            if sign * (value - others) < getattr(cfg, gap_key) or not beyond_chance(row, cfg):
                continue
            chance = BORDER_CHANCE if column.startswith("border") else row["box_area_mean"]
            x, y = row["peak_x_mean"], row["peak_y_mean"]
            reasons[cls].append(text.format(v=value, o=others, z=zc, c=chance, x=x, y=y))
    outside = classes.get("mean_map_outside_boxes")
    if outside is not None:
        for cls in classes.index:
            if reasons[cls] and pd.notna(outside[cls]) and outside[cls] >= 0.5:
                reasons[cls].append(
                    f"{outside[cls]:.0%} of the class's mean map lies outside all of its boxes"
                )
    return [reasons[c] for c in classes.index]


def _signs(c: pd.Series, rest: pd.Series, cfg: StrategiesConfig) -> list[tuple[float, str]]:
    """(strength, reason) of each shortcut sign of one cluster; strength >= 1 flags it.

    `rest` holds the same statistics over the class's other rows the model got right.
    """
    signs = []
    moves = rest["peak_share"] <= cfg.moving_share
    off_object = not c["pointing_hit_mean"] >= 0.5  # NaN without boxes: unknown, not on it
    if moves and off_object:
        signs.append(
            (
                c["peak_share"] / cfg.fixed_share,
                f"its peak sits on the same spot near ({c['peak_x_mean']:.2f}, "
                f"{c['peak_y_mean']:.2f}) in {c['peak_share']:.0%} of its images, while the "
                f"class's other images look elsewhere (only {rest['peak_share']:.0%} of them at "
                "a common spot)",
            )
        )
    excess = c["border_fraction_mean"] - max(BORDER_CHANCE, rest["border_fraction_mean"])
    signs.append(
        (
            excess / cfg.min_gap,
            f"{c['border_fraction_mean']:.0%} of its maps' mass lies in the outer eighth of the "
            f"image, vs {BORDER_CHANCE:.0%} for a map spread evenly and "
            f"{rest['border_fraction_mean']:.0%} in the class's other clusters",
        )
    )
    if pd.notna(c["energy_in_box_mean"]):
        below = min(c["box_area_mean"], rest["energy_in_box_mean"]) - c["energy_in_box_mean"]
        signs.append(
            (
                below / cfg.min_gap,
                f"only {c['energy_in_box_mean']:.0%} of its maps' mass lies on the object, vs "
                f"{c['box_area_mean']:.0%} for a map spread evenly and "
                f"{rest['energy_in_box_mean']:.0%} in the class's other clusters",
            )
        )
    return signs


def cluster_flags(clusters: pd.DataFrame, cfg: StrategiesConfig) -> pd.DataFrame:
    """flagged, flag_reasons and suspicion (>= 1 when flagged) of every cluster row.

    A cluster is flagged when one of its location signs holds and its maps are near-identical
    (radius at most `tight` times that of the class's other images): a shortcut looks the same
    in every image, while a group of objects that merely sit in one region still varies.
    A cluster is eligible when it has at least min_cluster_n rows, the class has other
    clusters to compare with, its maps carry evidence (median cam_max at least weak_evidence
    times the run's: a map normalised from almost nothing is noise), and, where it has labels,
    the model is mostly right with it (min_accuracy): a shortcut is a strategy that works on
    the data; a cluster of mostly wrong guesses is the model seeing nothing, and shows in the
    confusion table instead.
    """
    flagged, reasons, suspicion = [], [], []
    for _, c in clusters.iterrows():
        rest = c["rest"]
        eligible = (
            rest is not None
            and c["n"] >= cfg.min_cluster_n
            and c["cam_max_median"] >= cfg.weak_evidence * c["run_cam_max_median"]
            and c["radius"] > IDENTICAL  # exactly equal maps: duplicate images, not a strategy
            and not (c["n_labelled"] >= cfg.min_cluster_n and c["accuracy"] < cfg.min_accuracy)
        )
        signs = _signs(c, rest, cfg) if eligible else []
        tightness = c["tightness"] if eligible else np.inf
        strong = [text for strength, text in signs if strength >= 1]
        if strong and tightness <= cfg.tight:  # one strategy, shared by near-identical maps
            strong.append(
                f"its maps are nearly alike (radius {c['radius']:.3f} vs {rest['radius']:.3f} "
                f"for the class's other images), a strategy apart from the rest "
                f"({c['separation'] / max(c['radius'], 1e-9):.1f} radii to the nearest cluster)"
            )
        else:
            strong = []
        best = max([0.0, *(s for s, _ in signs)]) * min(1.0, cfg.tight / max(tightness, 1e-9))
        share = float(np.sqrt(c["share"]))
        flagged.append(bool(strong))
        reasons.append(strong)
        suspicion.append(max(best, 1.0) * share + 1.0 if strong else min(best, 0.99) * share)
    return pd.DataFrame(
        {"flagged": flagged, "flag_reasons": reasons, "suspicion": suspicion}, index=clusters.index
    )
