"""Attention statistics of a batch of normalised maps, vectorized (TF ops; numpy or tensors in)."""

from __future__ import annotations

import math

import tensorflow as tf

BORDER = 1.0 / 8.0  # the outer eighth of the width/height on each side
STAT_COLUMNS = (
    "cam_mean",
    "cam_entropy",
    "peak_x",
    "peak_y",
    "centroid_x",
    "centroid_y",
    "spread",
    "coverage",
    "border_fraction",
    "energy_in_box",
    "pointing_hit",
)


def attention_stats(
    maps: tf.Tensor,
    boxes: tf.Tensor,
    box_valid: tf.Tensor,
    tolerance: tf.Tensor | None = None,
    coarse: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Per-image statistics of maps (B,h,w) in [0,1], boxes (B,4) = x0,y0,x1,y1 in [0,1].

    Coordinates are pixel centres in [0,1] of width/height. The peak is taken on `coarse` (B,h',w')
    when given (the map at the layer's resolution, whose upsampled plateaus would otherwise pull
    an edge peak to the image edge), else on `maps`. Mass-based statistics are NaN for an
    all-zero map; box statistics are NaN where box_valid is False. pointing_hit is 1.0/0.0/NaN:
    a hit when the peak lies within `tolerance` (B,2) = the pointing game's tolerance divided by
    each image's own (width, height) of the box, i.e. within that many original-image pixels
    (Euclidean); zeros or None: inside the box only.
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_valid = tf.convert_to_tensor(box_valid, tf.bool)
    if tolerance is None:
        tolerance = tf.zeros((tf.shape(maps)[0], 2), tf.float32)
    tolerance = tf.convert_to_tensor(tolerance, tf.float32)  # (B,2)
    h, w = tf.shape(maps)[1], tf.shape(maps)[2]
    xs = (tf.cast(tf.range(w), tf.float32) + 0.5) / tf.cast(w, tf.float32)  # (w,)
    ys = (tf.cast(tf.range(h), tf.float32) + 0.5) / tf.cast(h, tf.float32)  # (h,)
    # Sums over the map with separable weights come from its row and column marginals, so
    # each statistic costs one pass over the (B,h,w) maps at most.
    cols = tf.reduce_sum(maps, axis=1)  # (B,w)
    rows = tf.reduce_sum(maps, axis=2)  # (B,h)
    mass = tf.reduce_sum(cols, axis=1)  # (B,)
    has_mass = mass > 0
    cells = tf.cast(h * w, tf.float32)
    # entropy of p = maps/mass: -sum p log p = log(mass) - sum(m log m)/mass
    mlogm = tf.reduce_sum(maps * tf.math.log(tf.where(maps > 0, maps, 1.0)), axis=(1, 2))
    entropy = tf.math.divide_no_nan(
        tf.math.log(tf.where(has_mass, mass, 1.0)) - tf.math.divide_no_nan(mlogm, mass),
        tf.math.log(cells),
    )

    peak_map = maps if coarse is None else tf.convert_to_tensor(coarse, tf.float32)
    ph, pw = tf.shape(peak_map)[1], tf.shape(peak_map)[2]
    flat_peak = tf.argmax(
        tf.reshape(peak_map, (tf.shape(peak_map)[0], -1)), axis=1, output_type=tf.int32
    )
    peak_x = (tf.cast(flat_peak % pw, tf.float32) + 0.5) / tf.cast(pw, tf.float32)
    peak_y = (tf.cast(flat_peak // pw, tf.float32) + 0.5) / tf.cast(ph, tf.float32)
    px = tf.math.divide_no_nan(cols, mass[:, None])  # (B,w): the mass's distribution over x
    py = tf.math.divide_no_nan(rows, mass[:, None])  # (B,h)
    cx = tf.reduce_sum(px * xs, axis=1)
    cy = tf.reduce_sum(py * ys, axis=1)
    var = tf.reduce_sum(px * (xs - cx[:, None]) ** 2, 1) + tf.reduce_sum(
        py * (ys - cy[:, None]) ** 2, 1
    )

    def mass_in(in_x: tf.Tensor, in_y: tf.Tensor) -> tf.Tensor:
        """Share of each map's mass where in_x (B,w) and in_y (B,h) are both 1: (B,)."""
        by_row = tf.einsum("bhw,bw->bh", maps, in_x)  # (B,h)
        return tf.math.divide_no_nan(tf.reduce_sum(by_row * in_y, axis=1), mass)

    interior_x = tf.cast((xs >= BORDER) & (xs <= 1 - BORDER), tf.float32)  # (w,)
    interior_y = tf.cast((ys >= BORDER) & (ys <= 1 - BORDER), tf.float32)  # (h,)
    interior = mass_in(
        tf.broadcast_to(interior_x, tf.shape(cols)), tf.broadcast_to(interior_y, tf.shape(rows))
    )
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))  # (B,1) each
    in_box = mass_in(
        tf.cast((xs >= x0) & (xs <= x1), tf.float32), tf.cast((ys >= y0) & (ys <= y1), tf.float32)
    )
    hit = pointing_hit(tf.stack([peak_x, peak_y], axis=1), boxes, tolerance)

    nan = tf.fill(tf.shape(mass), math.nan)

    def massed(t: tf.Tensor) -> tf.Tensor:
        return tf.where(has_mass, t, nan)

    def boxed(t: tf.Tensor) -> tf.Tensor:
        return tf.where(has_mass & box_valid, t, nan)

    return {
        "cam_mean": mass / cells,
        "cam_entropy": massed(entropy),
        "peak_x": massed(peak_x),
        "peak_y": massed(peak_y),
        "centroid_x": massed(cx),
        "centroid_y": massed(cy),
        "spread": massed(tf.sqrt(tf.maximum(var, 0.0))),
        "coverage": tf.reduce_mean(tf.cast(maps > 0.5, tf.float32), axis=(1, 2)),
        "border_fraction": massed(tf.maximum(1.0 - interior, 0.0)),
        "energy_in_box": boxed(in_box),
        "pointing_hit": boxed(tf.cast(hit, tf.float32)),
    }


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
