"""Where a run came from: hashes of its inputs, the code's git commit, and run.json."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf

from pipeline import __version__
from pipeline.model import LoadedModel


@dataclass(frozen=True)
class Timing:
    """How long the computing took; the first batch also pays for tracing the step."""

    computed_rows: int = 0  # manifest rows computed (fewer than the run's when it resumed)
    compute_seconds: float = 0.0
    first_batch_seconds: float = 0.0
    first_batch_rows: int = 0


def sha256(path: Path) -> str | None:
    """SHA-256 of a file (None for anything else)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_hashes(manifest: str, model: str | None, weights: str | None) -> dict[str, str | None]:
    """The SHA-256 of the manifest, the model file and the weights file (None: not a file)."""
    return {
        "manifest": sha256(Path(manifest)),
        "model": sha256(Path(model)) if model else None,
        "weights": sha256(Path(weights)) if weights else None,
    }


def git_commit() -> str | None:
    """The project's git commit, when it runs from a checkout."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _rate(images: float, seconds: float) -> float | None:
    return round(images / seconds, 3) if images > 0 and seconds > 0 else None


def timing_record(timing: Timing, seconds: float) -> dict[str, Any]:
    """run.json's timing: the whole run, and the computing part with and without batch one."""
    return {
        "seconds": round(seconds, 3),
        "computed_rows": timing.computed_rows,  # fewer than rows when the run resumed
        "compute_seconds": round(timing.compute_seconds, 3),
        "images_per_second": _rate(timing.computed_rows, timing.compute_seconds),
        "first_batch_seconds": round(timing.first_batch_seconds, 3),
        "steady_images_per_second": _rate(
            timing.computed_rows - timing.first_batch_rows,
            timing.compute_seconds - timing.first_batch_seconds,
        ),
    }


def model_record(loaded: LoadedModel, hashes: dict[str, str | None]) -> dict[str, Any]:
    """run.json's model: where it came from, its hashes, the layer explained, its classes."""
    return {
        "source": loaded.source,
        "sha256": hashes["model"],
        "weights_sha256": hashes["weights"],
        "layer": loaded.layer_name,
        "input_size": list(loaded.input_size),
        "channels": loaded.channels,
        "classes": len(loaded.class_names),
        "class_names": list(loaded.class_names),
        "output_activation": loaded.output_activation,
    }


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
    }


def run_record(
    config: dict,
    loaded: LoadedModel,
    manifest_path: str,
    hashes: dict[str, str | None],
    counts: dict[str, int],
    timing: Timing,
    seconds: float,
) -> dict[str, Any]:
    """What run.json holds: counts, timing, model, inputs' hashes, versions, the config."""
    return {
        "gradcam_audit": __version__,
        "git_commit": git_commit(),
        "counts": counts,
        "timing": timing_record(timing, seconds),
        "model": model_record(loaded, hashes),
        "manifest": {"path": str(manifest_path), "sha256": hashes["manifest"]},
        "versions": versions(),
        "config": config,
    }
