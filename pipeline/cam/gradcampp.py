"""Grad-CAM++ (Chattopadhyay et al., 2018), with the usual exponential-score closed form."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod

EPS = 1e-7


class GradCamPlusPlus(CamMethod):
    """alpha = g^2 / (2 g^2 + sum_ij(A) g^3); weight = sum_ij alpha * relu(g), per image."""

    name = "gradcampp"

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,C)
        g2 = grads**2
        g3 = g2 * grads
        sum_acts = tf.reduce_sum(acts, axis=(1, 2), keepdims=True)  # (B,1,1,C)
        alpha = g2 / (2.0 * g2 + sum_acts * g3 + EPS)
        alpha = tf.where(grads != 0.0, alpha, 0.0)
        return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
