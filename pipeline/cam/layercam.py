"""LayerCAM (Jiang et al., 2021): positive gradients as location-wise weights."""

from __future__ import annotations

import tensorflow as tf

from pipeline.cam.base import CamMethod


class LayerCam(CamMethod):
    """relu(sum_c relu(g) * A): works on earlier, finer layers too (model.layer=...)."""

    name = "layercam"

    def contributions(self, acts: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:  # (B,h,w,C)
        return tf.nn.relu(grads) * acts
