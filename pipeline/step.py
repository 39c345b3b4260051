"""The compiled batch step: predictions, per-image targets, Grad-CAM, maps, colour, statistics."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.cam.base import CamMethod, first_component
from pipeline.model import LoadedModel, guided_model
from pipeline.outputs import jet_lut
from pipeline.stats import attention_stats

TARGET_PRED = -1  # target codes baked into the step: pred, label, or a class index >= 0
TARGET_LABEL = -2
TARGET_TOPK = -3  # every one of the model.topk best classes: K maps (and rows) per image


def target_code(target: object, n_classes: int) -> int:
    """Map `target` (pred | label | class index) to the code used inside the step."""
    from pipeline.errors import ConfigError

    if target == "pred":
        return TARGET_PRED
    if target == "label":
        return TARGET_LABEL
    if target == "topk":
        return TARGET_TOPK
    try:
        index = int(str(target))
    except ValueError:
        raise ConfigError(
            f"target={target!r}; expected pred, label, topk or a class index"
        ) from None
    if not 0 <= index < n_classes:
        raise ConfigError(f"target={index} is out of range; the model has {n_classes} classes")
    return index


def scores_and_outputs(loaded: LoadedModel, scores: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw scores (B,N) -> (scores to explain, the model's own outputs), both (B,N')."""
    if loaded.binary:  # one unit z: classes [negative, positive] with scores [-z, z]
        z = scores[:, 0]
        scores = tf.stack([-z, z], axis=1)  # (B,2)
        if loaded.model_activation == "sigmoid":  # z is a logit, or p with score=probs
            p = tf.sigmoid(z) if loaded.output_activation == "sigmoid" else z
            return scores, tf.stack([1.0 - p, p], axis=1)
        return scores, scores
    squash = {"softmax": tf.nn.softmax, "sigmoid": tf.sigmoid}.get(
        loaded.output_activation, tf.identity
    )
    return scores, squash(scores)


def make_forward(loaded: LoadedModel) -> Callable[[tf.Tensor], tf.Tensor]:
    """Pixels (B,H,W,C) as floats 0..255 -> the model's outputs (B,N), as the step reports them."""

    @tf.autograph.experimental.do_not_convert  # plain TF calls; nothing for AutoGraph to do
    def forward(pixels: tf.Tensor) -> tf.Tensor:
        x = loaded.preprocess(pixels)
        if loaded.tail is not None:
            scores = loaded.tail(loaded.head(x, training=False), training=False)
        else:
            scores = loaded.full(x, training=False)[1]
        return scores_and_outputs(loaded, tf.cast(scores, tf.float32))[1]

    return forward


AUGMENTATIONS = [(False, 0.9), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1)]  # + identity


def build_step(
    loaded: LoadedModel,
    method: CamMethod,
    topk: int,
    target: int,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    colour: bool = True,
) -> Callable[..., dict[str, tf.Tensor]]:
    """One tf.function for a whole batch; batch size may vary without retracing.

    With colour, the outputs include the jet-coloured map at input size (for the overlays).

    Inputs: images (B,H,W,C) uint8, labels (B,) int32 (-1: none), boxes (B,4) float32 in [0,1],
    box_valid (B,) bool, tolerance (B,2) float32: the pointing game's tolerance in pixels divided
    by each image's original (width, height). Outputs: a dict of batched tensors (see the return
    statement). With a strategy, each batch is split over its replicas and the results gathered
    in order.
    """
    h, w = loaded.input_size
    c = loaded.channels
    n_classes = len(loaded.class_names)
    k = max(1, min(topk, n_classes))
    head, tail, full, prep = loaded.head, loaded.tail, loaded.full, loaded.preprocess
    forward = make_forward(loaded)
    guided = guided_model(loaded) if method.guided else None
    jet = tf.constant(jet_lut())  # (256,3) uint8

    def pick_targets(preds: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:  # (B,) int32
        if target in (TARGET_PRED, TARGET_TOPK):  # topk: rank 0 first, the others follow
            return preds
        if target == TARGET_LABEL:  # rows without a label fall back to pred (marked later)
            return tf.where(labels >= 0, labels, preds)
        return tf.fill(tf.shape(preds), tf.constant(target, tf.int32))

    signature = [
        tf.TensorSpec((None, h, w, c), tf.uint8),
        tf.TensorSpec((None,), tf.int32),
        tf.TensorSpec((None, 4), tf.float32),
        tf.TensorSpec((None,), tf.bool),
        tf.TensorSpec((None, 2), tf.float32),
    ]

    def cam(pixels, labels, targets=None):
        """(raw maps (B,h',w'), x, outputs, top-k, targets) for pixels (B,H,W,C) 0..255; the
        targets are picked from the predictions unless given (augmented copies reuse them)."""
        x = prep(pixels)  # (B,H,W,C)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            if tail is not None:  # record only the part after the target layer
                acts = head(x, training=False)  # (B,h',w',K)
                tape.watch(acts)
                scores = tf.cast(tail(acts, training=False), tf.float32)  # (B,N)
            else:
                tape.watch(x)
                acts, scores = full(x, training=False)
                scores = tf.cast(scores, tf.float32)  # float16 under mixed precision
            scores, outputs = scores_and_outputs(loaded, scores)  # (B,N) each
            topk_score, topk_index = tf.math.top_k(outputs, k=k)  # (B,k)
            if targets is None:
                targets = pick_targets(topk_index[:, 0], labels)  # (B,)
            # one-hot product, not gather: its gradient is deterministic on every device
            target_scores = tf.reduce_sum(scores * tf.one_hot(targets, n_classes), axis=1)  # (B,)
        grads = tape.gradient(target_scores, acts)  # (B,h',w',K); images are independent
        acts, grads = tf.cast(acts, tf.float32), tf.cast(grads, tf.float32)  # maps in float32
        if method.needs_forward:  # e.g. Score-CAM: masked forward passes
            raw = method.compute(acts, grads, pixels, targets, forward)
        elif eigen_smooth:  # first principal component of the channel contributions
            raw = tf.nn.relu(first_component(method.contributions(acts, grads)))
        else:
            raw = method(acts, grads)  # (B,h',w')
        return raw, x, outputs, topk_score, topk_index, targets

    def explain(pixels, labels, boxes, box_valid, tolerance, raw, x, outputs, targets):
        """Everything that depends on the one class each image's map explains."""
        cam_max = tf.reduce_max(raw, axis=(1, 2))  # (B,)
        maps = tf.math.divide_no_nan(raw, cam_max[:, None, None])  # all-zero stays zero
        if aug_smooth:  # mean of the normalised maps over flips and brightness changes
            total = maps
            for flip, factor in AUGMENTATIONS:
                aug = pixels[:, :, ::-1] if flip else pixels
                aug = tf.clip_by_value(aug * factor, 0.0, 255.0)
                raw_a = cam(aug, labels, targets)[0]
                raw_a = raw_a[:, :, ::-1] if flip else raw_a  # back to the image's orientation
                top = tf.reduce_max(raw_a, axis=(1, 2))
                total += tf.math.divide_no_nan(raw_a, top[:, None, None])
            mean = total / (len(AUGMENTATIONS) + 1)
            maps = tf.math.divide_no_nan(mean, tf.reduce_max(mean, axis=(1, 2))[:, None, None])
        up = tf.image.resize(maps[..., None], (h, w), method="bilinear")[..., 0]  # (B,H,W)
        up = tf.clip_by_value(up, 0.0, 1.0)
        result = {
            "target_index": targets,
            "target_score": tf.gather(outputs, targets, batch_dims=1),
            "cam_max": cam_max,
            "map": maps,
            "map_input": up,
            **attention_stats(up, boxes, box_valid, tolerance, coarse=maps),
        }
        if colour:  # jet(map) (B,H,W,3) uint8: a lookup of each level 0..255
            result["colour"] = tf.gather(jet, tf.cast(tf.round(up * 255.0), tf.int32))
        if guided is not None:  # guided backpropagation to the input, times the map
            with tf.GradientTape(watch_accessed_variables=False) as gtape:
                gtape.watch(x)
                gscores = scores_and_outputs(
                    loaded, tf.cast(guided(x, training=False), tf.float32)
                )[0]
                gtarget = tf.reduce_sum(gscores * tf.one_hot(targets, n_classes), axis=1)
            result["guided"] = gtape.gradient(gtarget, x) * up[..., None]  # (B,H,W,C)
        return result

    def step(images, labels, boxes, box_valid, tolerance):
        pixels = tf.cast(images, tf.float32)
        raw, x, outputs, topk_score, topk_index, targets = cam(pixels, labels)
        common = {
            "topk_index": topk_index,
            "topk_score": topk_score,
            "pred_index": topk_index[:, 0],
            "pred_score": topk_score[:, 0],
        }
        box_args = (boxes, box_valid, tolerance)
        first = explain(pixels, labels, *box_args, raw, x, outputs, targets)
        if target != TARGET_TOPK:
            return {**common, **first}
        ranks = [first]  # target=topk: one map per top class, stacked on axis 1: (B,K,...)
        for r in range(1, k):
            raw_r = cam(pixels, labels, topk_index[:, r])[0]
            ranks.append(explain(pixels, labels, *box_args, raw_r, x, outputs, topk_index[:, r]))
        return {**common, **{key: tf.stack([p[key] for p in ranks], axis=1) for key in first}}

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return tf.function(
            step, input_signature=signature, reduce_retracing=True, jit_compile=jit_compile
        )
    return _distributed(step, strategy, signature, jit_compile)


def _distributed(
    step: Callable, strategy: tf.distribute.Strategy, signature: list, jit_compile: bool
) -> Callable:
    """Split each batch into equal per-replica slices (padded), run them, gather in order."""
    n = strategy.num_replicas_in_sync
    inner = tf.function(step, jit_compile=jit_compile)

    @tf.function(input_signature=signature, reduce_retracing=True)
    def run(images, labels, boxes, box_valid, tolerance):
        b = tf.shape(images)[0]
        per = (b + n - 1) // n
        pad = per * n - b
        args = [
            tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]]),
            tf.pad(labels, [[0, pad]], constant_values=-1),
            tf.pad(boxes, [[0, pad], [0, 0]]),
            tf.pad(box_valid, [[0, pad]]),
            tf.pad(tolerance, [[0, pad], [0, 0]]),
        ]

        def slice_for(ctx, tensor):
            start = ctx.replica_id_in_sync_group * per
            return tensor[start : start + per]

        parts = [
            strategy.experimental_distribute_values_from_function(
                lambda ctx, t=t: slice_for(ctx, t)
            )
            for t in args
        ]
        result = strategy.run(inner, args=tuple(parts))
        gathered = {}
        for key, value in result.items():  # collectives take no uint8: widen, gather, narrow
            dtype = value.values[0].dtype if hasattr(value, "values") else value.dtype
            if dtype == tf.uint8:
                value = strategy.run(lambda t: tf.cast(t, tf.int32), args=(value,))
            whole = strategy.gather(value, axis=0)[:b]
            gathered[key] = tf.cast(whole, dtype) if dtype == tf.uint8 else whole
        return gathered

    return run
