"""XGrad-CAM (Fu et al., 2020): gradients weighted by the normalised activations."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod

EPS = 1e-7


class XGradCam(CamMethod):
    """weight_c = sum_ij(g * A) / (sum_ij(A) + eps), per image."""

    name = "xgradcam"

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,C)
        return tf.reduce_sum(grads * acts, axis=(1, 2)) / (tf.reduce_sum(acts, axis=(1, 2)) + EPS)
