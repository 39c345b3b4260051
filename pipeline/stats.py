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
    maps: tf.Tensor, boxes: tf.Tensor, box_valid: tf.Tensor, coarse: tf.Tensor | None = None
) -> dict[str, tf.Tensor]:
    """Per-image statistics of maps (B,h,w) in [0,1], boxes (B,4) = x0,y0,x1,y1 in [0,1].

    Coordinates are pixel centres in [0,1] of width/height. The peak is taken on `coarse` (B,h',w')
    when given (the map at the layer's resolution, whose upsampled plateaus would otherwise pull
    an edge peak to the image edge), else on `maps`. Mass-based statistics are NaN for an
    all-zero map; box statistics are NaN where box_valid is False. pointing_hit is 1.0/0.0/NaN.
    """
    maps = tf.convert_to_tensor(maps, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_valid = tf.convert_to_tensor(box_valid, tf.bool)
    h, w = tf.shape(maps)[1], tf.shape(maps)[2]
    xs = (tf.cast(tf.range(w), tf.float32) + 0.5) / tf.cast(w, tf.float32)  # (w,)
    ys = (tf.cast(tf.range(h), tf.float32) + 0.5) / tf.cast(h, tf.float32)  # (h,)
    gx, gy = xs[None, None, :], ys[None, :, None]  # broadcast to (B,h,w)

    mass = tf.reduce_sum(maps, axis=(1, 2))  # (B,)
    has_mass = mass > 0
    p = tf.math.divide_no_nan(maps, mass[:, None, None])  # (B,h,w), sums to 1 (or all 0)
    cells = tf.cast(h * w, tf.float32)
    plogp = tf.where(p > 0, p * tf.math.log(tf.where(p > 0, p, 1.0)), 0.0)
    entropy = tf.math.divide_no_nan(-tf.reduce_sum(plogp, axis=(1, 2)), tf.math.log(cells))

    peak_map = maps if coarse is None else tf.convert_to_tensor(coarse, tf.float32)
    ph, pw = tf.shape(peak_map)[1], tf.shape(peak_map)[2]
    flat_peak = tf.argmax(
        tf.reshape(peak_map, (tf.shape(peak_map)[0], -1)), axis=1, output_type=tf.int32
    )
    peak_x = (tf.cast(flat_peak % pw, tf.float32) + 0.5) / tf.cast(pw, tf.float32)
    peak_y = (tf.cast(flat_peak // pw, tf.float32) + 0.5) / tf.cast(ph, tf.float32)
    cx = tf.reduce_sum(p * gx, axis=(1, 2))
    cy = tf.reduce_sum(p * gy, axis=(1, 2))
    var = tf.reduce_sum(p * ((gx - cx[:, None, None]) ** 2 + (gy - cy[:, None, None]) ** 2), (1, 2))
    border = tf.cast(
        (gx < BORDER) | (gx > 1 - BORDER) | (gy < BORDER) | (gy > 1 - BORDER), tf.float32
    )

    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))  # (B,1,1) each
    inside = tf.cast((gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1), tf.float32)  # (B,h,w)
    hit = (
        (peak_x >= boxes[:, 0])
        & (peak_x <= boxes[:, 2])
        & (peak_y >= boxes[:, 1])
        & (peak_y <= boxes[:, 3])
    )

    nan = tf.fill(tf.shape(mass), math.nan)

    def massed(t: tf.Tensor) -> tf.Tensor:
        return tf.where(has_mass, t, nan)

    def boxed(t: tf.Tensor) -> tf.Tensor:
        return tf.where(has_mass & box_valid, t, nan)

    return {
        "cam_mean": tf.reduce_mean(maps, axis=(1, 2)),
        "cam_entropy": massed(entropy),
        "peak_x": massed(peak_x),
        "peak_y": massed(peak_y),
        "centroid_x": massed(cx),
        "centroid_y": massed(cy),
        "spread": massed(tf.sqrt(tf.maximum(var, 0.0))),
        "coverage": tf.reduce_mean(tf.cast(maps > 0.5, tf.float32), axis=(1, 2)),
        "border_fraction": massed(tf.reduce_sum(p * border, axis=(1, 2))),
        "energy_in_box": boxed(tf.reduce_sum(p * inside, axis=(1, 2))),
        "pointing_hit": boxed(tf.cast(hit, tf.float32)),
    }
