"""The shared CAM algorithm (weight the channels, sum, ReLU) and the hooks a method overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf


class CamMethod:
    """Turns the target layer's activations and gradients of a batch into raw maps.

    The hooks, from the narrowest to the widest; a method overrides the first that fits:
    - `weights(acts, grads)` -> (B,C): per-image channel weights (Grad-CAM, Grad-CAM++, ...)
    - `contributions(acts, grads)` -> (B,h,w,C): each channel's share of the map (HiResCAM, ...)
    - `combine(contributions)` -> (B,h,w): contributions to one map (Eigen-CAM: first component)
    - `compute(acts, grads, pixels, targets, forward)` -> (B,h,w): the raw map of a batch, with
      the pixels and a forward function for methods that need more (Score-CAM)
    and `from_config(cam)` builds the method from the `cam` config group (its own options).
    Normalisation per image happens in the compiled step, shared by all methods.
    """

    name = "base"
    guided = False  # True: the step also explains with guided backpropagation x the map

    def __init__(self, eigen_smooth: bool = False, aug_smooth: bool = False):
        self.eigen_smooth = eigen_smooth  # first principal component instead of the sum
        self.aug_smooth = aug_smooth  # the step averages maps over flips and brightness changes

    @classmethod
    def from_config(cls, cam: Any) -> CamMethod:
        """The method with the options of the `cam` config group (a CamConfig)."""
        return cls(eigen_smooth=cam.eigen_smooth, aug_smooth=cam.aug_smooth)

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,C)
        raise NotImplementedError

    def contributions(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w,C)
        """Each channel's share of the map, before the sum over channels (eigen_smooth
        takes their first principal component instead of the sum)."""
        return acts * self.weights(acts, grads)[:, None, None, :]

    def combine(self, contributions: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,h,w)
        """The channels' contributions summed, then ReLU."""
        return tf.nn.relu(tf.reduce_sum(contributions, axis=-1))

    def compute(
        self,
        acts: tf.Tensor,  # (B,h,w,C) float32
        grads: tf.Tensor,  # (B,h,w,C) float32: d target score / d acts
        pixels: tf.Tensor,  # (B,H,W,C) float32 0..255
        targets: tf.Tensor,  # (B,) int32: the class each map explains
        forward: Callable[[tf.Tensor], tf.Tensor],  # pixels (n,H,W,C) -> outputs (n,N)
    ) -> tf.Tensor:  # -> (B,h,w) raw map, >= 0
        """The raw map of a batch; gradient methods need only acts and grads."""
        contributions = self.contributions(acts, grads)
        if self.eigen_smooth:
            return tf.nn.relu(first_component(contributions))
        return self.combine(contributions)

    def __call__(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w)
        """The raw map of a gradient method (one that needs no pixels)."""
        return self.compute(acts, grads, None, None, None)


def first_component(t: tf.Tensor) -> tf.Tensor:
    """Per image, the projection of (B,h,w,C) on its first principal component: (B,h,w).

    The sign of a singular vector is arbitrary; it is chosen so the result correlates
    positively with the channel sum of `t`.
    """
    b, h, w, c = tf.unstack(tf.shape(t))
    flat = tf.reshape(t, (b, h * w, c))  # (B,hw,C)
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
    return tf.reshape(projection * sign, (b, h, w))
