"""The step over the replicas of a tf.distribute strategy (devices=all): each batch split in
equal slices, run on every replica, gathered back in order."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.step.outputs import StepOutputs


def distributed(
    step: Callable, strategy: tf.distribute.Strategy, signature: list, jit_compile: bool
) -> Callable[..., StepOutputs]:
    """Split each batch into equal per-replica slices (padded), run them, gather in order."""
    inner = tf.function(step, jit_compile=jit_compile, autograph=False)

    @tf.function(input_signature=signature, reduce_retracing=True, autograph=False)
    def run(images, labels, boxes, box_valid, tolerance):
        b = tf.shape(images)[0]
        parts = _split(strategy, [images, labels, boxes, box_valid, tolerance])
        result = strategy.run(inner, args=tuple(parts))
        return tf.nest.map_structure(lambda v: _gather(strategy, v, b), result)

    return run


def _split(strategy: tf.distribute.Strategy, args: list[tf.Tensor]) -> list:
    """Pad each (B,...) input to a multiple of the replicas; each replica gets its slice."""
    n = strategy.num_replicas_in_sync
    b = tf.shape(args[0])[0]
    per = (b + n - 1) // n
    pad = per * n - b
    fills = {tf.int32: -1}  # labels: padded rows have none
    padded = [
        tf.pad(t, [[0, pad]] + [[0, 0]] * (t.shape.rank - 1), constant_values=fills.get(t.dtype, 0))
        for t in args
    ]
    return [
        strategy.experimental_distribute_values_from_function(
            lambda ctx, t=t: t[ctx.replica_id_in_sync_group * per :][:per]
        )
        for t in padded
    ]


def _gather(strategy: tf.distribute.Strategy, value, b: tf.Tensor):
    """The replicas' results as one (B,...) tensor; collectives take no uint8: widen, narrow."""
    if value is None:
        return None
    dtype = value.values[0].dtype if hasattr(value, "values") else value.dtype
    if dtype == tf.uint8:
        value = strategy.run(lambda t: tf.cast(t, tf.int32), args=(value,))
    whole = strategy.gather(value, axis=0)[:b]
    return tf.cast(whole, dtype) if dtype == tf.uint8 else whole
