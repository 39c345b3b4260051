"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the activations."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod, first_component


class EigenCam(CamMethod):
    """Gradient-free: project each image's centred (h*w, C) activations on their first right
    singular vector (sign chosen to agree with the summed activations)."""

    name = "eigencam"

    def contributions(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C)
        return acts

    def combine(self, contributions: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,h,w)
        return tf.nn.relu(first_component(contributions))
