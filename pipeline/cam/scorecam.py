"""Score-CAM (Wang et al., 2020), batched: channels weighted by the score of masked inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from pipeline.cam.base import CamMethod
from pipeline.errors import ConfigError


class ScoreCam(CamMethod):
    """Each kept channel, upsampled and min-max normalised, masks the image; the target's
    output on the masked image, softmaxed over the channels, is that channel's weight.

    Gradient-free. `max_channels` keeps the channels with the highest mean activation (as
    Faster Score-CAM does); `channels_per_pass` bounds memory: each forward pass sees
    batch x channels_per_pass masked images.
    """

    name = "scorecam"

    def __init__(
        self, max_channels: int = 64, channels_per_pass: int = 8, aug_smooth: bool = False
    ):
        super().__init__(aug_smooth=aug_smooth)
        self.max_channels = max_channels
        self.channels_per_pass = channels_per_pass

    @classmethod
    def from_config(cls, cam: Any) -> ScoreCam:
        """`cam.max_channels`; `cam.batch_size` is the channels per forward pass."""
        if cam.eigen_smooth:
            raise ConfigError(f"cam.eigen_smooth does not apply to cam={cls.name}")
        return cls(cam.max_channels, cam.batch_size, aug_smooth=cam.aug_smooth)

    def compute(
        self,
        acts: tf.Tensor,
        grads: tf.Tensor,
        pixels: tf.Tensor,
        targets: tf.Tensor,
        forward: Callable[[tf.Tensor], tf.Tensor],
    ) -> tf.Tensor:  # acts (B,h,w,K), pixels (B,H,W,C) 0..255 -> (B,h,w)
        k = acts.shape[-1]
        m = min(self.max_channels, k) if self.max_channels > 0 else k
        _, idx = tf.math.top_k(tf.reduce_mean(acts, axis=(1, 2)), k=m)  # (B,M)
        kept = tf.gather(acts, idx, axis=3, batch_dims=1)  # (B,h,w,M)
        size = tf.shape(pixels)[1:3]
        up = tf.image.resize(kept, size, method="bilinear")  # (B,H,W,M)
        lo = tf.reduce_min(up, axis=(1, 2), keepdims=True)
        hi = tf.reduce_max(up, axis=(1, 2), keepdims=True)
        masks = tf.math.divide_no_nan(up - lo, hi - lo)  # (B,H,W,M) in [0,1]
        b = tf.shape(pixels)[0]
        scores = []
        for start in range(0, m, self.channels_per_pass):
            part = masks[..., start : start + self.channels_per_pass]  # (B,H,W,c)
            c = part.shape[-1]
            masked = pixels[:, None] * tf.transpose(part, (0, 3, 1, 2))[..., None]  # (B,c,H,W,C)
            flat = tf.reshape(masked, tf.concat([[b * c], tf.shape(pixels)[1:]], 0))
            out = forward(flat)  # (B*c,N)
            out = tf.reshape(out, (b, c, -1))
            scores.append(tf.gather(out, targets, axis=2, batch_dims=1))  # (B,c)
        weights = tf.nn.softmax(tf.concat(scores, axis=1), axis=1)  # (B,M)
        return tf.nn.relu(tf.einsum("bhwm,bm->bhw", kept, weights))
