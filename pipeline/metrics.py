"""Faithfulness of the maps, batched: deletion and insertion AUC, drop and increase in confidence.

Off unless `metrics.names` lists them; each costs forward passes (deletion and insertion
`metrics.steps + 1` each, the confidence pair two), all in one compiled function per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.config import MetricsConfig, check_metrics

Forward = Callable[[tf.Tensor], tf.Tensor]  # pixels (B,H,W,C) float 0..255 -> outputs (B,N)

COLUMNS = {  # metric name -> summary column
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    "drop_in_confidence": "drop_in_confidence",
    "increase_in_confidence": "increase_in_confidence",
}


def build_metrics(
    forward: Forward,
    names: list[str],
    steps: int,
    size: tuple[int, int],
    channels: int,
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
    """A tf.function(images (B,H,W,C) uint8, maps (B,H,W) in [0,1], targets (B,) int32) ->
    {column: (B,) float32} for the columns of `names`, in COLUMNS order.

    `forward` maps pixel values (float, 0..255) to the model's outputs (B,N). Deletion removes
    the map's pixels from the highest down in `steps` equal steps (set to the image's mean
    colour) and records the target's output; insertion adds them, in the same order, to an
    image filled with its mean colour; the AUC is the
    trapezoid mean of that curve (lower deletion and higher insertion: a more faithful map).
    drop_in_confidence is max(0, y - o) / y and increase_in_confidence is [o > y], where y is the
    output on the image and o on the image multiplied by its map.
    """
    h, w = size
    check_metrics(MetricsConfig(list(names), steps))
    signature = [
        tf.TensorSpec((None, h, w, channels), tf.uint8),
        tf.TensorSpec((None, h, w), tf.float32),
        tf.TensorSpec((None,), tf.int32),
    ]

    @tf.function(input_signature=signature, reduce_retracing=True, autograph=False)
    def metrics(images: tf.Tensor, maps: tf.Tensor, targets: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(images, tf.float32)  # (B,H,W,C)
        curves = _curve_aucs(forward, names, steps, pixels, maps, targets)
        return {**curves, **_confidence(forward, names, pixels, maps, targets)}

    return metrics


def _target_output(forward: Forward, pixels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """The output (B,) of each image's target class on pixels (B,H,W,C)."""
    return tf.gather(forward(pixels), targets, batch_dims=1)


def _rank(maps: tf.Tensor) -> tf.Tensor:
    """Each pixel's place (B,H,W,1) int32 in its map's order, 0 = the hottest pixel."""
    b, h, w = tf.shape(maps)[0], maps.shape[1], maps.shape[2]
    flat = tf.reshape(maps, (b, h * w))
    # ties broken by position, so the order is deterministic
    order = tf.argsort(flat, axis=1, direction="DESCENDING", stable=True)
    return tf.reshape(tf.argsort(order, axis=1, stable=True), (b, h, w, 1))


def _curve_aucs(
    forward: Forward,
    names: list[str],
    steps: int,
    pixels: tf.Tensor,
    maps: tf.Tensor,
    targets: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """deletion_auc and insertion_auc (B,), those of them in `names`."""
    if "deletion" not in names and "insertion" not in names:
        return {}
    rank = _rank(maps)  # (B,H,W,1)
    cells = maps.shape[1] * maps.shape[2]
    tops = [rank < (s * cells) // steps for s in range(steps + 1)]  # the first s/steps of the order
    # removed pixels take the image's mean colour: black would draw new edges the model
    # reacts to, and blur keeps the object's outline
    base = tf.broadcast_to(tf.reduce_mean(pixels, axis=(1, 2), keepdims=True), tf.shape(pixels))
    out = {}
    if "deletion" in names:
        out[COLUMNS["deletion"]] = _auc(forward, tops, base, pixels, targets)
    if "insertion" in names:
        out[COLUMNS["insertion"]] = _auc(forward, tops, pixels, base, targets)
    return out


def _auc(
    forward: Forward, tops: list[tf.Tensor], top: tf.Tensor, rest: tf.Tensor, targets: tf.Tensor
) -> tf.Tensor:
    """Trapezoid mean (B,) of the target's output along the curve: at step s, the pixels in
    tops[s] (B,H,W,1) taken from `top`, the others from `rest` (both (B,H,W,C))."""
    curve = tf.stack(
        [_target_output(forward, tf.where(t, top, rest), targets) for t in tops], axis=1
    )  # (B,steps+1)
    steps = len(tops) - 1
    return (tf.reduce_sum(curve, 1) - (curve[:, 0] + curve[:, -1]) / 2) / steps


def _confidence(
    forward: Forward, names: list[str], pixels: tf.Tensor, maps: tf.Tensor, targets: tf.Tensor
) -> dict[str, tf.Tensor]:
    """drop_in_confidence and increase_in_confidence (B,), those of them in `names`."""
    if "drop_in_confidence" not in names and "increase_in_confidence" not in names:
        return {}
    y = _target_output(forward, pixels, targets)  # on the image
    o = _target_output(forward, pixels * maps[..., None], targets)  # on the image times its map
    out = {}
    if "drop_in_confidence" in names:
        out["drop_in_confidence"] = tf.math.divide_no_nan(tf.nn.relu(y - o), y)
    if "increase_in_confidence" in names:
        out["increase_in_confidence"] = tf.cast(o > y, tf.float32)
    return out
