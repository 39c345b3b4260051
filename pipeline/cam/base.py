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

    def __call__(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # -> (B,h,w)
        weights = self.weights(acts, grads)  # (B,C)
        return tf.nn.relu(tf.einsum("bhwc,bc->bhw", acts, weights))
