"""CAM methods: small plugins over one shared base (base.py), chosen by `cam.name`.

A new method is one file here with a subclass of CamMethod, one line in METHODS, and
conf/cam/<name>.yaml.
"""

from typing import Any

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


def method_class(name: str) -> type[CamMethod]:
    """The CAM method registered under `name` (cam.name)."""
    if name not in METHODS:
        raise ConfigError(f"unknown cam method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def get_method(name: str, **options) -> CamMethod:
    """The CAM method registered under `name`, with its options (e.g. eigen_smooth=True)."""
    return method_class(name)(**options)


def from_config(cam: Any) -> CamMethod:
    """The method the `cam` config group names, built from that group's options."""
    return method_class(cam.name).from_config(cam)


__all__ = ["CamMethod", "METHODS", "from_config", "get_method", "method_class"]
