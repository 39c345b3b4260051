"""Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation x the upsampled Grad-CAM."""

from __future__ import annotations

from pipeline.cam.gradcam import GradCam


class GuidedGradCam(GradCam):
    """The map is Grad-CAM's; the step also returns `guided` (B,H,W,C): the guided-backprop
    gradient of the target score with respect to the (preprocessed) input, multiplied by the
    map at input size, the pixel-space detail the paper pairs with the coarse map."""

    name = "guided_gradcam"
    guided = True
