"""HiResCAM (Draelos & Carin, 2020): element-wise gradient x activation, summed over channels."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod


class HiResCam(CamMethod):
    """No spatial averaging of the gradients: each location keeps its own weight."""

    name = "hirescam"

    def __call__(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w)
        return tf.nn.relu(tf.reduce_sum(grads * acts, axis=-1))
