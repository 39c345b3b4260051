"""HiResCAM (Draelos & Carin, 2020): element-wise gradient x activation, summed over channels."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod


class HiResCam(CamMethod):
    """No spatial averaging of the gradients: each location keeps its own weight."""

    name = "hirescam"

    def contributions(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C)
        return grads * acts
