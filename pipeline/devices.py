"""Where the step runs: TensorFlow's own placement, or a MirroredStrategy (devices=all); the
Keras dtype policy (precision) while the model is built."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import keras
import tensorflow as tf

log = logging.getLogger(__name__)


def make_strategy(devices: str):
    """None for TensorFlow's own placement; a MirroredStrategy over every GPU (or, without GPUs,
    every logical CPU device) for devices=all."""
    if devices != "all":
        return None
    names = [d.name for d in tf.config.list_logical_devices("GPU")]
    names = names or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) < 2:
        log.info("devices=all: one device (%s), no strategy needed", names)
        return None
    log.info("devices=all: MirroredStrategy over %s", names)
    return tf.distribute.MirroredStrategy(names)


@contextmanager
def dtype_policy(precision: str):
    """Keras's global dtype policy while the model is built (mixed_float16 on GPUs)."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)
