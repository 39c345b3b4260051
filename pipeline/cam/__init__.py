"""CAM methods: small plugins over one shared base, chosen by `cam.name`."""

from pipeline.cam.base import CamMethod
from pipeline.cam.eigencam import EigenCam
from pipeline.cam.gradcam import GradCam
from pipeline.cam.gradcampp import GradCamPlusPlus
from pipeline.cam.guided_gradcam import GuidedGradCam
from pipeline.cam.hirescam import HiResCam
from pipeline.cam.layercam import LayerCam
from pipeline.cam.scorecam import ScoreCam
from pipeline.cam.xgradcam import XGradCam
from pipeline.errors import ConfigError

METHODS: dict[str, type[CamMethod]] = {
    cls.name: cls
    for cls in (
        GradCam,
        GradCamPlusPlus,
        HiResCam,
        XGradCam,
        LayerCam,
        EigenCam,
        ScoreCam,
        GuidedGradCam,
    )
}


def get_method(name: str, **options) -> CamMethod:
    """The CAM method registered under `name`, with its options (e.g. Score-CAM's)."""
    if name not in METHODS:
        raise ConfigError(f"unknown cam method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name](**options)


__all__ = ["CamMethod", "METHODS", "get_method"]
