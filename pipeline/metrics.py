"""Faithfulness of the maps, batched: deletion and insertion AUC, drop and increase in confidence.

Off unless `metrics.names` lists them; each costs forward passes (deletion and insertion
`metrics.steps + 1` each, the confidence pair two), all in one compiled function per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.errors import ConfigError

COLUMNS = {  # metric name -> summary column
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    "drop_in_confidence": "drop_in_confidence",
    "increase_in_confidence": "increase_in_confidence",
}


def check_names(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise ConfigError(f"metrics.names has {unknown}; expected any of {', '.join(COLUMNS)}")
    return list(names)


def build_metrics(
    forward: Callable[[tf.Tensor], tf.Tensor],
    names: list[str],
    steps: int,
    size: tuple[int, int],
    channels: int,
) -> Callable[..., dict[str, tf.Tensor]]:
    """A tf.function(images (B,H,W,C) uint8, maps (B,H,W) in [0,1], targets (B,)) -> columns.

    `forward` maps pixel values (float, 0..255) to the model's outputs (B,N). Deletion removes
    the map's pixels from the highest down in `steps` equal steps (set to the image's mean
    colour) and records the target's output; insertion adds them, in the same order, to an
    image filled with its mean colour; the AUC is the
    trapezoid mean of that curve (lower deletion and higher insertion: a more faithful map).
    drop_in_confidence is max(0, y - o) / y and increase_in_confidence is [o > y], where y is the
    output on the image and o on the image multiplied by its map.
    """
    h, w = size
    if steps < 1:
        raise ConfigError(f"metrics.steps={steps}; expected a positive integer")

    def target_output(pixels: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:  # -> (B,)
        return tf.gather(forward(pixels), targets, batch_dims=1)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, h, w, channels), tf.uint8),
            tf.TensorSpec((None, h, w), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ],
        reduce_retracing=True,
    )
    def metrics(images, maps, targets):
        pixels = tf.cast(images, tf.float32)  # (B,H,W,C)
        b = tf.shape(maps)[0]
        flat = tf.reshape(maps, (b, h * w))
        # rank 0 = the hottest pixel; ties broken by position, so the order is deterministic
        order = tf.argsort(flat, axis=1, direction="DESCENDING", stable=True)
        rank = tf.reshape(tf.argsort(order, axis=1, stable=True), (b, h, w, 1))
        out = {}
        if "deletion" in names or "insertion" in names:
            # removed pixels take the image's mean colour: black would draw new edges the model
            # reacts to, and blur keeps the object's outline
            base = tf.broadcast_to(
                tf.reduce_mean(pixels, axis=(1, 2), keepdims=True), tf.shape(pixels)
            )
            curves = {"deletion": [], "insertion": []}
            for s in range(steps + 1):
                top = rank < (s * h * w) // steps  # (B,H,W,1): the first s/steps of the order
                if "deletion" in names:
                    curves["deletion"].append(target_output(tf.where(top, base, pixels), targets))
                if "insertion" in names:
                    curves["insertion"].append(target_output(tf.where(top, pixels, base), targets))
            for name, curve in curves.items():
                if name in names:
                    c = tf.stack(curve, axis=1)  # (B,steps+1)
                    out[COLUMNS[name]] = (tf.reduce_sum(c, 1) - (c[:, 0] + c[:, -1]) / 2) / steps
        if "drop_in_confidence" in names or "increase_in_confidence" in names:
            y = target_output(pixels, targets)
            o = target_output(pixels * maps[..., None], targets)
            if "drop_in_confidence" in names:
                out["drop_in_confidence"] = tf.math.divide_no_nan(tf.nn.relu(y - o), y)
            if "increase_in_confidence" in names:
                out["increase_in_confidence"] = tf.cast(o > y, tf.float32)
        return out

    return metrics
