"""build_step: one tf.function per run that takes a batch of images to predictions, maps
and their attention statistics, for every image at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline.cam.base import CamMethod
from pipeline.model import LoadedModel, guided_model
from pipeline.stats import attention_stats
from pipeline.step.distributed import distributed
from pipeline.step.forward import make_forward, scores_and_outputs
from pipeline.step.outputs import Explanation, Predictions, StepOutputs
from pipeline.step.targets import TARGET_TOPK, pick_targets

AUGMENTATIONS = [(False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1)]  # + identity


class CamPass(NamedTuple):
    """One forward and backward pass of a batch."""

    raw: tf.Tensor  # (B,h,w) the method's raw map
    x: tf.Tensor  # (B,H,W,C) the preprocessed input
    outputs: tf.Tensor  # (B,N) the model's outputs
    topk_score: tf.Tensor  # (B,k)
    topk_index: tf.Tensor  # (B,k) int32
    targets: tf.Tensor  # (B,) int32: the class explained


class BatchStep:
    """The step's parts; build_step compiles `__call__` into one tf.function.

    Inputs: images (B,H,W,C) uint8, labels (B,) int32 (-1: none), boxes (B,4) float32 in
    [0,1], box_valid (B,) bool, tolerance (B,2) float32: the pointing game's tolerance in
    pixels divided by each image's original (width, height).
    """

    def __init__(self, loaded: LoadedModel, method: CamMethod, topk: int, target: int):
        self.loaded, self.method, self.target = loaded, method, target
        self.n_classes = len(loaded.class_names)
        self.k = max(1, min(topk, self.n_classes))
        self.forward = make_forward(loaded)
        self.guided = guided_model(loaded) if method.guided else None

    def signature(self) -> list[tf.TensorSpec]:
        h, w = self.loaded.input_size
        return [
            tf.TensorSpec((None, h, w, self.loaded.channels), tf.uint8),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None,), tf.bool),
            tf.TensorSpec((None, 2), tf.float32),
        ]

    def __call__(self, images, labels, boxes, box_valid, tolerance) -> StepOutputs:
        pixels = tf.cast(images, tf.float32)
        first = self.cam(pixels, labels)
        predictions = Predictions(
            first.topk_index, first.topk_score, first.topk_index[:, 0], first.topk_score[:, 0]
        )
        box_args = (boxes, box_valid, tolerance)
        explained = self.explain(pixels, labels, box_args, first, first.targets)
        if self.target != TARGET_TOPK:
            return StepOutputs(predictions, explained)
        ranks = [explained]  # target=topk: one map per top class, stacked on axis 1: (B,K,...)
        for r in range(1, self.k):
            rank_r = self.cam(pixels, labels, first.topk_index[:, r])
            ranks.append(self.explain(pixels, labels, box_args, rank_r, first.topk_index[:, r]))
        stacked = tf.nest.map_structure(lambda *t: _stack_ranks(t), *ranks)
        return StepOutputs(predictions, stacked)

    def cam(self, pixels: tf.Tensor, labels: tf.Tensor, targets=None) -> CamPass:
        """Raw maps for pixels (B,H,W,C) 0..255; the targets are picked from the predictions
        unless given (augmented copies and lower ranks pass theirs)."""
        loaded = self.loaded
        x = loaded.preprocess(pixels)  # (B,H,W,C)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            if loaded.tail is not None:  # record only the part after the target layer
                acts = loaded.head(x, training=False)  # (B,h',w',K)
                tape.watch(acts)
                scores = tf.cast(loaded.tail(acts, training=False), tf.float32)  # (B,N)
            else:
                tape.watch(x)
                acts, scores = loaded.full(x, training=False)
                scores = tf.cast(scores, tf.float32)  # float16 under mixed precision
            scores, outputs = scores_and_outputs(loaded, scores)  # (B,N) each
            topk_score, topk_index = tf.math.top_k(outputs, k=self.k)  # (B,k)
            if targets is None:
                targets = pick_targets(self.target, topk_index[:, 0], labels)  # (B,)
            # one-hot product, not gather: its gradient is deterministic on every device
            target_scores = tf.reduce_sum(scores * tf.one_hot(targets, self.n_classes), axis=1)
        grads = tape.gradient(target_scores, acts)  # (B,h',w',K); images are independent
        acts, grads = tf.cast(acts, tf.float32), tf.cast(grads, tf.float32)  # maps in float32
        raw = self.method.compute(acts, grads, pixels, targets, self.forward)  # (B,h',w')
        return CamPass(raw, x, outputs, topk_score, topk_index, targets)

    def explain(self, pixels, labels, box_args, cam: CamPass, targets) -> Explanation:
        """Everything that depends on the one class each image's map explains."""
        cam_max = tf.reduce_max(cam.raw, axis=(1, 2))  # (B,)
        maps = tf.math.divide_no_nan(cam.raw, cam_max[:, None, None])  # all-zero stays zero
        if self.method.aug_smooth:
            maps = self.smooth(maps, pixels, labels, targets)
        h, w = self.loaded.input_size
        up = tf.clip_by_value(upsample_bilinear(maps, h, w), 0.0, 1.0)  # (B,H,W)
        return Explanation(
            target_index=targets,
            target_score=tf.gather(cam.outputs, targets, batch_dims=1),
            cam_max=cam_max,
            map=maps,
            map_input=up,
            stats=attention_stats(up, *box_args, coarse=maps),
            guided=self.guided_detail(cam.x, targets, up) if self.guided is not None else None,
        )

    def smooth(self, maps, pixels, labels, targets) -> tf.Tensor:
        """The mean of the normalised maps over flips and brightness changes (aug_smooth)."""
        total = maps
        for flip, factor in AUGMENTATIONS:
            aug = pixels[:, :, ::-1] if flip else pixels
            aug = tf.clip_by_value(aug * factor, 0.0, 255.0)
            raw_a = self.cam(aug, labels, targets).raw
            raw_a = raw_a[:, :, ::-1] if flip else raw_a  # back to the image's orientation
            top = tf.reduce_max(raw_a, axis=(1, 2))
            total += tf.math.divide_no_nan(raw_a, top[:, None, None])
        mean = total / (len(AUGMENTATIONS) + 1)
        return tf.math.divide_no_nan(mean, tf.reduce_max(mean, axis=(1, 2))[:, None, None])

    def guided_detail(self, x, targets, up) -> tf.Tensor:
        """Guided backpropagation to the input, times the map: (B,H,W,C)."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            raw = tf.cast(self.guided(x, training=False), tf.float32)
            scores = scores_and_outputs(self.loaded, raw)[0]
            target = tf.reduce_sum(scores * tf.one_hot(targets, self.n_classes), axis=1)
        return tape.gradient(target, x) * up[..., None]


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: tf.image.resize's bilinear (half-pixel centres, no antialiasing)
    along one axis as a matrix, its taps and weights computed in TF's float32 arithmetic."""
    scale = np.float32(n_in) / np.float32(n_out)
    centre = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(centre)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centre), n_in - 1).astype(np.int64)
    lerp = centre - floor
    weights = np.zeros((n_out, n_in), np.float32)
    np.add.at(weights, (np.arange(n_out), lower), np.float32(1) - lerp)
    np.add.at(weights, (np.arange(n_out), upper), lerp)
    return weights


def upsample_bilinear(maps: tf.Tensor, h: int, w: int) -> tf.Tensor:
    """(B,h',w') -> (B,h,w): tf.image.resize(method="bilinear") to float32 rounding (2e-7), as
    two small matrix products, which cost half the resize op's CPU (0.15 against 0.3 ms an
    image for 14x14 -> 224x224). tf.image.resize when the map's size is not static."""
    mh, mw = maps.shape[1], maps.shape[2]
    if mh is None or mw is None:
        return tf.image.resize(maps[..., None], (h, w), method="bilinear")[..., 0]
    rows, cols = bilinear_weights(mh, h), bilinear_weights(mw, w)  # (h,h'), (w,w')
    return tf.einsum("hi,bij,wj->bhw", tf.constant(rows), maps, tf.constant(cols))


def _stack_ranks(tensors: tuple) -> tf.Tensor | None:
    return None if tensors[0] is None else tf.stack(tensors, axis=1)


def build_step(
    loaded: LoadedModel,
    method: CamMethod,
    topk: int,
    target: int,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
) -> Callable[..., StepOutputs]:
    """One tf.function for a whole batch (see BatchStep); batch size may vary without retracing.

    With a strategy, each batch is split over its replicas and the results gathered in order.
    """
    step = BatchStep(loaded, method, topk, target)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return tf.function(
            step.__call__,
            input_signature=step.signature(),
            reduce_retracing=True,
            jit_compile=jit_compile,
            autograph=False,  # plain Python control flow only: traces in ~0.6 s instead of ~3
        )
    return distributed(step.__call__, strategy, step.signature(), jit_compile)
