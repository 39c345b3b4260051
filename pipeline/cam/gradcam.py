"""Grad-CAM (Selvaraju et al., 2017)."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod


class GradCam(CamMethod):
    """Channel weight = spatial mean of that image's gradients (never pooled across the batch)."""

    name = "gradcam"

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,C)
        return tf.reduce_mean(grads, axis=(1, 2))
