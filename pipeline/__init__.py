"""gradcam-audit: batch Grad-CAM audits of Keras image classifiers."""

import os
from pathlib import Path

# the user's own TF_CPP_MIN_LOG_LEVEL, if any (pipeline.quiet keeps it); then our default
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

__version__ = "0.1.0"

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def __getattr__(name: str):
    """`pipeline.load_heatmaps`, loaded on first use (keeps pandas out of `import pipeline`)."""
    if name == "load_heatmaps":
        from pipeline.heatmaps import load_heatmaps  # here: only when asked for (see above)

        return load_heatmaps
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
