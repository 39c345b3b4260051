"""Which class each image's map explains: the codes baked into the compiled step."""

from __future__ import annotations

import tensorflow as tf

from pipeline.errors import ConfigError

TARGET_PRED = -1  # target codes baked into the step: pred, label, or a class index >= 0
TARGET_LABEL = -2
TARGET_TOPK = -3  # every one of the model.topk best classes: K maps (and rows) per image
CODES = {"pred": TARGET_PRED, "label": TARGET_LABEL, "topk": TARGET_TOPK}


def target_code(target: object, n_classes: int) -> int:
    """`target` (pred | label | topk | class index, already checked by config.validate) -> the
    step's code; a class index must also exist in the loaded model."""
    if target in CODES:
        return CODES[target]
    index = int(str(target))
    if not 0 <= index < n_classes:
        raise ConfigError(f"target={index} is out of range; the model has {n_classes} classes")
    return index


def pick_targets(code: int, preds: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """The class each image explains: (B,) int32 from predictions and labels (B,) (-1: none)."""
    if code in (TARGET_PRED, TARGET_TOPK):  # topk: rank 0 first, the others follow
        return preds
    if code == TARGET_LABEL:  # rows without a label fall back to pred (marked later)
        return tf.where(labels >= 0, labels, preds)
    return tf.fill(tf.shape(preds), tf.constant(code, tf.int32))
