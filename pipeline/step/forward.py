"""The model's raw scores -> the scores a map explains and the outputs the summary reports."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.model import LoadedModel


def scores_and_outputs(loaded: LoadedModel, scores: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw scores (B,N) -> (scores to explain, the model's own outputs), both (B,N')."""
    if loaded.binary:  # one unit z: classes [negative, positive] with scores [-z, z]
        z = scores[:, 0]
        scores = tf.stack([-z, z], axis=1)  # (B,2)
        if loaded.model_activation == "sigmoid":  # z is a logit, or p with score=probs
            p = tf.sigmoid(z) if loaded.output_activation == "sigmoid" else z
            return scores, tf.stack([1.0 - p, p], axis=1)
        return scores, scores
    squash = {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid}.get(
        loaded.output_activation, tf.identity
    )
    return scores, squash(scores)


def make_forward(loaded: LoadedModel) -> Callable[[tf.Tensor], tf.Tensor]:
    """Pixels (B,H,W,C) as floats 0..255 -> the model's outputs (B,N), as the step reports them."""

    @tf.autograph.experimental.do_not_convert  # plain TF calls; nothing for AutoGraph to do
    def forward(pixels: tf.Tensor) -> tf.Tensor:
        x = loaded.preprocess(pixels)
        if loaded.tail is not None:
            scores = loaded.tail(loaded.head(x, training=False), training=False)
        else:
            scores = loaded.full(x, training=False)[1]
        return scores_and_outputs(loaded, tf.cast(scores, tf.float32))[1]

    return forward
