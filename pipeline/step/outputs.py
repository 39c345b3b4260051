"""What the compiled step returns: typed, so a misspelt field fails at once. No TensorFlow here:
the same types hold the step's tensors and, after `.numpy()`, the arrays the summary reads."""

from __future__ import annotations

from typing import Any, NamedTuple

Array = Any  # a tf.Tensor inside the step, a numpy array after it


class Predictions(NamedTuple):
    """What the model predicts for each image; the same for every explained rank."""

    topk_index: Array  # (B,k) int32, best first
    topk_score: Array  # (B,k) float32: the model's outputs (probabilities or logits)
    pred_index: Array  # (B,) int32 = topk_index[:, 0]
    pred_score: Array  # (B,) float32 = topk_score[:, 0]


class Explanation(NamedTuple):
    """One explained class per image. With target=topk every field has a rank axis: (B,K,...)."""

    target_index: Array  # (B,) int32: the class the map explains
    target_score: Array  # (B,) float32: the model's output for it
    cam_max: Array  # (B,) float32: the raw map's maximum, before normalisation
    map: Array  # (B,h,w) float32 in [0,1]: on the target layer's grid
    map_input: Array  # (B,H,W) float32 in [0,1]: bilinear upsampling to the model input
    stats: Any  # pipeline.stats.AttentionStats: one (B,) tensor per attention statistic
    guided: Array | None  # (B,H,W,C) float32: guided backprop x map_input (guided_gradcam)


class StepOutputs(NamedTuple):
    """One batch through the step."""

    predictions: Predictions
    explanation: Explanation
