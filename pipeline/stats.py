"""Attention statistics of a batch of normalised maps, vectorized (TF ops; numpy or tensors in)."""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

BORDER = 1.0 / 8.0  # the outer eighth of the width/height on each side


class AttentionStats(NamedTuple):
    """Per-image statistics of a batch of maps, each (B,) float32; the fields are the columns.

    Coordinates are pixel centres in [0,1] of the width/height. NaN where undefined: the
    mass-based ones for an all-zero map, the box ones where the image has no valid box.
    """

    cam_mean: tf.Tensor  # mean map value
    cam_entropy: tf.Tensor  # entropy of the map as a distribution, / log(h*w): 0..1
    peak_x: tf.Tensor  # the (first) maximum's cell centre
    peak_y: tf.Tensor
    centroid_x: tf.Tensor  # the mass's centre
    centroid_y: tf.Tensor
    spread: tf.Tensor  # sqrt(var_x + var_y) of the mass around its centre
    coverage: tf.Tensor  # share of pixels over 0.5
    border_fraction: tf.Tensor  # share of the mass in the outer BORDER of each side
    energy_in_box: tf.Tensor  # share of the mass inside the box
    pointing_hit: tf.Tensor  # 1.0 when the peak is within the tolerance of the box, else 0.0


STAT_COLUMNS = AttentionStats._fields


class _Marginals(NamedTuple):
    """A batch of maps (B,h,w) summed along each axis, with each axis's pixel centres.

    Sums over the map with separable weights come from its row and column marginals, so each
    statistic costs one pass over the maps at most.
    """

    xs: tf.Tensor  # (w,) pixel centres in [0,1]
    ys: tf.Tensor  # (h,)
    cols: tf.Tensor  # (B,w) sum over rows
    rows: tf.Tensor  # (B,h) sum over columns
    mass: tf.Tensor  # (B,) sum of the map


def attention_stats(
    maps: tf.Tensor,
    boxes: tf.Tensor,
    box_valid: tf.Tensor,
    tolerance: tf.Tensor | None = None,
    coarse: tf.Tensor | None = None,
) -> AttentionStats:
    """Per-image statistics of maps (B,h,w) in [0,1], boxes (B,4) = x0,y0,x1,y1 in [0,1].

    Coordinates are pixel centres in [0,1] of width/height. The peak is taken on `coarse` (B,h',w')
    when given (the map at the layer's resolution, whose upsampled plateaus would otherwise pull
    an edge peak to the image edge), else on `maps`. Mass-based statistics are NaN for an
    all-zero map; box statistics are NaN where box_valid (B,) is False. pointing_hit is
    1.0/0.0/NaN: a hit when the peak lies within `tolerance` (B,2) = the pointing game's
    tolerance divided by each image's own (width, height) of the box, i.e. within that many
    original-image pixels (Euclidean); zeros or None: inside the box only.
    """
    maps = tf.convert_to_tensor(maps, tf.float32)  # (B,h,w)
    boxes = tf.convert_to_tensor(boxes, tf.float32)  # (B,4)
    box_valid = tf.convert_to_tensor(box_valid, tf.bool)  # (B,)
    if tolerance is None:
        tolerance = tf.zeros((tf.shape(maps)[0], 2), tf.float32)
    tolerance = tf.convert_to_tensor(tolerance, tf.float32)  # (B,2)
    m = _marginals(maps)
    peak_map = maps if coarse is None else tf.convert_to_tensor(coarse, tf.float32)
    peak_x, peak_y = _peak(peak_map)
    cx, cy, spread = _centroid_and_spread(m)
    hit = pointing_hit(tf.stack([peak_x, peak_y], axis=1), boxes, tolerance)  # (B,)
    has_mass = m.mass > 0  # (B,)
    nan = tf.fill(tf.shape(m.mass), math.nan)
    boxed = has_mass & box_valid
    return AttentionStats(
        cam_mean=m.mass / _cells(maps),
        cam_entropy=tf.where(has_mass, _entropy(maps, m.mass), nan),
        peak_x=tf.where(has_mass, peak_x, nan),
        peak_y=tf.where(has_mass, peak_y, nan),
        centroid_x=tf.where(has_mass, cx, nan),
        centroid_y=tf.where(has_mass, cy, nan),
        spread=tf.where(has_mass, spread, nan),
        coverage=tf.reduce_mean(tf.cast(maps > 0.5, tf.float32), axis=(1, 2)),
        border_fraction=tf.where(has_mass, _border_fraction(maps, m), nan),
        energy_in_box=tf.where(boxed, _energy_in_box(maps, m, boxes), nan),
        pointing_hit=tf.where(boxed, tf.cast(hit, tf.float32), nan),
    )


def _centres(n: tf.Tensor) -> tf.Tensor:
    """The n pixel centres of an axis, in [0,1]: (n,)."""
    return (tf.cast(tf.range(n), tf.float32) + 0.5) / tf.cast(n, tf.float32)


def _cells(maps: tf.Tensor) -> tf.Tensor:
    """h*w of maps (B,h,w), as a float32 scalar."""
    return tf.cast(tf.shape(maps)[1] * tf.shape(maps)[2], tf.float32)


def _marginals(maps: tf.Tensor) -> _Marginals:
    """Row and column sums, mass and pixel centres of maps (B,h,w)."""
    cols = tf.reduce_sum(maps, axis=1)  # (B,w)
    rows = tf.reduce_sum(maps, axis=2)  # (B,h)
    return _Marginals(
        xs=_centres(tf.shape(maps)[2]),
        ys=_centres(tf.shape(maps)[1]),
        cols=cols,
        rows=rows,
        mass=tf.reduce_sum(cols, axis=1),
    )


def _entropy(maps: tf.Tensor, mass: tf.Tensor) -> tf.Tensor:
    """Entropy of p = maps/mass over the h*w cells, divided by log(h*w): (B,) in [0,1]."""
    # -sum p log p = log(mass) - sum(m log m)/mass
    mlogm = tf.reduce_sum(maps * tf.math.log(tf.where(maps > 0, maps, 1.0)), axis=(1, 2))  # (B,)
    return tf.math.divide_no_nan(
        tf.math.log(tf.where(mass > 0, mass, 1.0)) - tf.math.divide_no_nan(mlogm, mass),
        tf.math.log(_cells(maps)),
    )


def _peak(peak_map: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cell centre (x, y), each (B,), of the first maximum (row-major) of peak_map (B,h',w')."""
    ph, pw = tf.shape(peak_map)[1], tf.shape(peak_map)[2]
    flat_peak = tf.argmax(
        tf.reshape(peak_map, (tf.shape(peak_map)[0], -1)), axis=1, output_type=tf.int32
    )  # (B,)
    peak_x = (tf.cast(flat_peak % pw, tf.float32) + 0.5) / tf.cast(pw, tf.float32)
    peak_y = (tf.cast(flat_peak // pw, tf.float32) + 0.5) / tf.cast(ph, tf.float32)
    return peak_x, peak_y


def _centroid_and_spread(m: _Marginals) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The mass's centre (x, y) and its spread sqrt(var_x + var_y), each (B,)."""
    px = tf.math.divide_no_nan(m.cols, m.mass[:, None])  # (B,w): the mass's distribution over x
    py = tf.math.divide_no_nan(m.rows, m.mass[:, None])  # (B,h)
    cx = tf.reduce_sum(px * m.xs, axis=1)
    cy = tf.reduce_sum(py * m.ys, axis=1)
    var = tf.reduce_sum(px * (m.xs - cx[:, None]) ** 2, 1) + tf.reduce_sum(
        py * (m.ys - cy[:, None]) ** 2, 1
    )
    return cx, cy, tf.sqrt(tf.maximum(var, 0.0))


def _mass_in(maps: tf.Tensor, mass: tf.Tensor, in_x: tf.Tensor, in_y: tf.Tensor) -> tf.Tensor:
    """Share of each map's mass where in_x (B,w) and in_y (B,h) are both 1: (B,)."""
    by_row = tf.einsum("bhw,bw->bh", maps, in_x)  # (B,h)
    return tf.math.divide_no_nan(tf.reduce_sum(by_row * in_y, axis=1), mass)


def _border_fraction(maps: tf.Tensor, m: _Marginals) -> tf.Tensor:
    """Share of each map's mass in the outer BORDER of its width or height: (B,)."""
    interior_x = tf.cast((m.xs >= BORDER) & (m.xs <= 1 - BORDER), tf.float32)  # (w,)
    interior_y = tf.cast((m.ys >= BORDER) & (m.ys <= 1 - BORDER), tf.float32)  # (h,)
    interior = _mass_in(
        maps,
        m.mass,
        tf.broadcast_to(interior_x, tf.shape(m.cols)),
        tf.broadcast_to(interior_y, tf.shape(m.rows)),
    )
    return tf.maximum(1.0 - interior, 0.0)


def _energy_in_box(maps: tf.Tensor, m: _Marginals, boxes: tf.Tensor) -> tf.Tensor:
    """Share of each map's mass inside its box (B,4) = x0,y0,x1,y1: (B,)."""
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))  # (B,1) each
    in_x = tf.cast((m.xs >= x0) & (m.xs <= x1), tf.float32)  # (B,w)
    in_y = tf.cast((m.ys >= y0) & (m.ys <= y1), tf.float32)  # (B,h)
    return _mass_in(maps, m.mass, in_x, in_y)


def pointing_hit(peak: tf.Tensor, boxes: tf.Tensor, tolerance: tf.Tensor) -> tf.Tensor:
    """The pointing game: is each peak (B,2) within the ellipse tolerance (B,2) of its box (B,4)?

    All in [0,1] of each image's width and height; the tolerance is tol/W, tol/H, so the test is
    the Euclidean distance in original-image pixels to the box (0 inside) <= tol. (B,) bool.
    """
    below = boxes[:, 0:2] - peak  # (B,2): > 0 when the peak is left of / above the box
    above = peak - boxes[:, 2:4]  # (B,2): > 0 when it is right of / below the box
    gap = tf.maximum(tf.maximum(below, above), 0.0)  # (B,2) dx, dy; 0 inside on that axis
    inside = tf.reduce_all(gap <= 0.0, axis=1)  # (B,)
    positive = tf.reduce_all(tolerance > 0.0, axis=1)  # (B,): tolerance 0 means inside only
    scaled = gap / tf.where(tolerance > 0.0, tolerance, 1.0)  # (B,2) dx/tx, dy/ty
    near = positive & (tf.reduce_sum(scaled**2, axis=1) <= 1.0)  # (B,)
    return inside | near
