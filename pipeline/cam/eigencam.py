"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the activations."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod


class EigenCam(CamMethod):
    """Gradient-free: project each image's centred (h*w, C) activations on their first right
    singular vector. The sign of a singular vector is arbitrary; it is chosen so the map
    correlates positively with the summed activations."""

    name = "eigencam"

    def __call__(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w)
        b, h, w, c = tf.unstack(tf.shape(acts))
        flat = tf.reshape(acts, (b, h * w, c))  # (B,hw,C)
        centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
        _, _, v = tf.linalg.svd(centred, full_matrices=False)  # v: (B,C,min(hw,C))
        projection = tf.linalg.matvec(centred, v[:, :, 0])  # (B,hw)
        total = tf.reduce_sum(flat, axis=2)  # (B,hw)
        agree = tf.reduce_sum(
            (projection - tf.reduce_mean(projection, 1, keepdims=True))
            * (total - tf.reduce_mean(total, 1, keepdims=True)),
            axis=1,
        )
        sign = tf.where(agree < 0, -1.0, 1.0)[:, None]
        return tf.nn.relu(tf.reshape(projection * sign, (b, h, w)))
