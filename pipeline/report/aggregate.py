"""Per-class (and per-cluster) statistics of summary rows: the numbers every audit table shares."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

SPOT_CELLS = 3  # "one spot": a 3x3 window of the layer's grid cells (a tag straddles cells)
STATS = ("energy_in_box", "pointing_hit", "border_fraction", "cam_entropy", "coverage")
FAITHFULNESS = ("deletion_auc", "insertion_auc", "drop_in_confidence", "increase_in_confidence")


def grid_cell(coords: pd.Series, most: int = 512) -> float:
    """The side of the grid cell peaks were taken on: peaks are cell centres (i + 0.5) / n, so
    n is the smallest count that puts every coordinate on a centre (1/16 when unknown)."""
    values = np.unique(coords.dropna().to_numpy(np.float64))
    if not len(values):
        return 1.0 / 16
    for n in range(1, most + 1):
        steps = values * n - 0.5
        if np.all(np.abs(steps - np.round(steps)) < 1e-3):
            return 1.0 / n
    return 1.0 / most


def spot_share(cells: pd.DataFrame) -> float:
    """The largest share of (x, y) integer cells inside one SPOT_CELLS-square window."""
    cells = cells.dropna()
    if cells.empty:
        return np.nan
    counts = Counter(zip(cells["x"].astype(int), cells["y"].astype(int)))
    steps = range(SPOT_CELLS)
    windows = {(x - dx, y - dy) for x, y in counts for dx in steps for dy in steps}
    best = max(sum(counts.get((a + i, b + j), 0) for i in steps for j in steps) for a, b in windows)
    return best / len(cells)


def aggregate(
    ok: pd.DataFrame,
    key: pd.Series,
    extra: list[str],
    by_label: bool = True,
    cells: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Per class (key) and extra columns: n, accuracy and the attention statistics.

    Attention statistics are grouped by `key` (explained class or label); accuracy by the true
    label (the share of a class's labelled images that were predicted right), or with
    by_label=False by `key` too (a cluster's accuracy: its own labelled members'). `cells`:
    the (x, y) cell size of the grid peaks were taken on, else guessed from these rows.
    """
    frame = ok.assign(
        _k=key.loc[ok.index].astype(int),
        correct=ok["correct"].astype("float64"),
        pointing_hit=ok["pointing_hit"].astype("float64"),
    )
    grouped = frame.groupby(["_k", *extra], sort=True)
    table = pd.DataFrame({"n": grouped.size()})
    labelled = frame[frame["label_index"].notna()]
    if by_label:  # a class's accuracy: its labelled images, wherever they were explained
        labelled = labelled.assign(_k=labelled["label_index"].astype(int))
    grouped_labelled = labelled.groupby(["_k", *extra])
    table = table.join(
        pd.DataFrame(
            {"n_labelled": grouped_labelled.size(), "accuracy": grouped_labelled["correct"].mean()}
        ),
        how="outer",
    )
    table["n"] = table["n"].fillna(0).astype(int)
    table["n_labelled"] = table["n_labelled"].fillna(0).astype(int)
    table["pred_score_mean"] = grouped["pred_score"].mean()
    table["cam_max_median"] = grouped["cam_max"].median()  # how much evidence the maps carry
    area = (frame["x1"] - frame["x0"]) * (frame["y1"] - frame["y0"])
    box_area = (area / (frame["width"] * frame["height"])).where(frame["energy_in_box"].notna())
    table["box_area_mean"] = box_area.groupby([frame["_k"], *[frame[e] for e in extra]]).mean()
    for stat in STATS:
        table[f"{stat}_mean"] = grouped[stat].mean()
        table[f"{stat}_median"] = grouped[stat].median()
    for col in FAITHFULNESS:  # present when the run computed them
        if col in frame.columns and frame[col].notna().any():
            table[f"{col}_mean"] = grouped[col].mean()
    for point in ("centroid", "peak"):  # where the attention sits across the class's images
        var = grouped[f"{point}_x"].var(ddof=0) + grouped[f"{point}_y"].var(ddof=0)
        table[f"{point}_spread"] = np.sqrt(var)
        table[f"{point}_x_mean"] = grouped[f"{point}_x"].mean()
        table[f"{point}_y_mean"] = grouped[f"{point}_y"].mean()
    # the share of images whose peak sits on one spot, SPOT_CELLS^2 cells of the layer's grid
    # (where peaks are taken; a small tag straddles cells): ~1 for a fixed spot such as a tag,
    # about 9/cells for peaks at random
    cx, cy = cells or (grid_cell(frame["peak_x"]), grid_cell(frame["peak_y"]))
    cells = pd.DataFrame({"x": np.floor(frame["peak_x"] / cx), "y": np.floor(frame["peak_y"] / cy)})
    keys = [frame["_k"], *[frame[e] for e in extra]]
    shares = cells.groupby(keys).apply(spot_share) if len(cells) else None
    table["peak_share"] = shares if isinstance(shares, pd.Series) else np.nan
    return table
