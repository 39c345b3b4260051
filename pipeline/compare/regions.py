"""Named regions of an image (the border, corners, edges, the centre, the object box) and the
words for where attention moved between two runs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Region(NamedTuple):
    key: str  # column-friendly name
    name: str  # what attention moves to or from: "the top-left corner"
    where: str  # how its share is told: "in the top-left corner (outer quarter)"
    x: tuple[float, float]  # [lo, hi) as shares of the width (cell centres)
    y: tuple[float, float]
    ring: bool = False  # the outside of the box [x] x [y] instead of the inside


E, Q = 1.0 / 8.0, 1.0 / 4.0  # the outer eighth (as stats.BORDER), the outer quarter
REGIONS = [
    Region("border", "the border", "in the outer eighth", (E, 1 - E), (E, 1 - E), ring=True),
    Region("centre", "the centre", "in the middle half", (Q, 1 - Q), (Q, 1 - Q)),
    Region("top_left", "the top-left corner", "in the top-left corner (outer quarter)",
           (0, Q), (0, Q)),
    Region("top_right", "the top-right corner", "in the top-right corner (outer quarter)",
           (1 - Q, 1), (0, Q)),
    Region("bottom_left", "the bottom-left corner", "in the bottom-left corner (outer quarter)",
           (0, Q), (1 - Q, 1)),
    Region("bottom_right", "the bottom-right corner",
           "in the bottom-right corner (outer quarter)", (1 - Q, 1), (1 - Q, 1)),
    Region("top", "the top edge", "in the top eighth", (0, 1), (0, E)),
    Region("bottom", "the bottom edge", "in the bottom eighth", (0, 1), (1 - E, 1)),
    Region("left", "the left edge", "in the left eighth", (0, E), (0, 1)),
    Region("right", "the right edge", "in the right eighth", (1 - E, 1), (0, 1)),
]  # fmt: skip
BOX = Region("box", "the object", "inside the object box", (0, 1), (0, 1))
SPECIFIC = 0.6  # the smallest region holding this share of the largest move is named


def region_masks(grid: int) -> np.ndarray:
    """(R, grid*grid) float32: 1 where a cell centre lies in the region (REGIONS order)."""
    centres = (np.arange(grid) + 0.5) / grid
    xs, ys = np.meshgrid(centres, centres)  # (g,g): x along columns, y along rows
    masks = []
    for r in REGIONS:
        inside = (xs >= r.x[0]) & (xs < r.x[1]) & (ys >= r.y[0]) & (ys < r.y[1])
        masks.append(~inside if r.ring else inside)
    return np.stack(masks).reshape(len(REGIONS), grid * grid).astype(np.float32)


def region_areas(grid: int) -> np.ndarray:
    """(R,) share of the image each region covers on this grid."""
    return region_masks(grid).mean(axis=1)


def shares(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(n,R): each map's (n,g,g) share of its mass in each region; NaN for a map without mass."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    mass = flat.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, flat @ masks.T / mass, np.nan)


def place_of(x: float, y: float) -> str:
    """The smallest named region holding the point (x, y) (shares of width and height)."""
    inside = [r for r in REGIONS if (r.x[0] <= x < r.x[1] and r.y[0] <= y < r.y[1]) != r.ring]
    areas = dict(zip([r.key for r in REGIONS], region_areas(8)))
    best = min(inside, key=lambda r: areas[r.key], default=None)
    return best.name if best is not None else f"around ({x:.2f}, {y:.2f}) of the image"


class Move(NamedTuple):
    """Where a class's attention went: the region that gained most and the one that lost most."""

    to: Region
    frm: Region | None
    share_a: float  # the gaining region's share before (run A) ...
    share_b: float  # ... and after (run B)
    size: float  # share_b - share_a

    def words(self) -> str:
        origin = self.frm.name if self.frm is not None else "elsewhere"
        return (
            f"attention moved from {origin} to {self.to.name}: {self.share_b:.0%} of the map "
            f"{self.to.where} vs {self.share_a:.0%} before"
        )


def _specific(regions: list[Region], gain: np.ndarray, areas: np.ndarray) -> int | None:
    """The smallest region whose gain is at least SPECIFIC of the largest (None: no gain)."""
    finite = np.where(np.isfinite(gain), gain, -np.inf)
    best = float(finite.max()) if len(finite) else -np.inf
    if not best > 0:
        return None
    candidates = [i for i in range(len(regions)) if finite[i] >= SPECIFIC * best]
    return min(candidates, key=lambda i: (areas[i], -finite[i]))


def largest_move(
    share_a: np.ndarray, share_b: np.ndarray, areas: np.ndarray, regions: list[Region]
) -> Move | None:
    """The move between two runs' mean region shares (R,), named by its most specific regions."""
    gain = share_b - share_a
    to = _specific(regions, gain, areas)
    if to is None:
        return None
    frm = _specific(regions, -gain, areas)
    return Move(
        regions[to], None if frm is None else regions[frm], share_a[to], share_b[to], gain[to]
    )
