"""The shared CAM algorithm: weight the target layer's channels, sum, ReLU."""

from __future__ import annotations

import tensorflow as tf


class CamMethod:
    """Turns activations and gradients of a batch into raw (unnormalised) maps.

    Subclasses give the per-image channel weights; a method that needs more overrides `__call__`.
    Normalisation per image happens in the compiled step, shared by all methods.
    """

    name = "base"
    needs_forward = False  # True: compute() also gets the pixels, targets and a forward function
    guided = False  # True: the step also returns guided backpropagation x the map ("guided")

    def weights(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C) -> (B,C)
        raise NotImplementedError

    def contributions(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w,C)
        """Each channel's share of the map, before the sum over channels (eigen_smooth
        takes their first principal component instead of the sum)."""
        return acts * self.weights(acts, grads)[:, None, None, :]

    def __call__(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w)
        return tf.nn.relu(tf.reduce_sum(self.contributions(acts, grads), axis=-1))


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
