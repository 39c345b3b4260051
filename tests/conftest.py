"""Shared fixtures: the real conf/ via Hydra, tiny models saved to disk, generated images."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from pipeline import CONF_DIR
from pipeline.config import register_configs

register_configs()
SIZE = 32  # tiny models take 32x32 inputs
N_CLASSES = 5


@pytest.fixture(autouse=True)
def _no_demo_cache_in_home(tmp_path_factory, monkeypatch):
    """Never touch the user's cache: the demo builds into a per-session folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def compose_cfg(*overrides: str) -> DictConfig:
    """The real conf/ with command-line style overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., DictConfig]:
    """compose_cfg with output_dir in tmp_path and no progress bar."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg(f"output_dir={tmp_path / 'out'}", "progress=false", *overrides)

    return make


# ----------------------------------------------------------------------------- models


def tiny_cnn(
    channels: int = 3, head: str = "dense_softmax", n_classes: int = N_CLASSES, seed: int = 0
) -> keras.Model:
    """conv -> conv (last_conv) -> GAP -> logits; head: dense_softmax | softmax_layer | linear."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, channels), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(12, 3, activation="relu", padding="same", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    activation = "softmax" if head == "dense_softmax" else None
    x = keras.layers.Dense(n_classes, activation=activation, name="logits")(x)
    if head == "softmax_layer":
        x = keras.layers.Softmax(name="probs")(x)
    return keras.Model(inputs, x, name=f"tiny_{head}")


def nested_cnn(seed: int = 0) -> keras.Model:
    """A Sequential feature extractor nested inside a Functional classifier."""
    keras.utils.set_random_seed(seed)
    base = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="inner_conv1"),
            keras.layers.Conv2D(10, 3, activation="relu", padding="same", name="inner_conv2"),
            keras.layers.MaxPooling2D(name="inner_pool"),
        ],
        name="backbone",
    )
    inputs = keras.Input((SIZE, SIZE, 3))
    x = base(inputs)
    x = keras.layers.Conv2D(6, 1, activation="relu", name="outer_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, activation="softmax")(x))


def skip_cnn(seed: int = 0) -> keras.Model:
    """A residual block whose skip connection jumps over the target layer."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    a = keras.layers.Conv2D(6, 3, activation="relu", padding="same", name="stem")(inputs)
    b = keras.layers.Conv2D(6, 3, activation="relu", padding="same", name="branch")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(x))


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny models saved with model.save(), so the real loader runs."""
    folder = tmp_path_factory.mktemp("models")
    files = {}
    for name, model, ext in [
        ("rgb", tiny_cnn(3), ".keras"),
        ("gray", tiny_cnn(1, seed=1), ".keras"),
        ("rgb_h5", tiny_cnn(3, seed=2), ".h5"),
        ("softmax_layer", tiny_cnn(3, head="softmax_layer", seed=3), ".keras"),
        ("linear", tiny_cnn(3, head="linear", seed=4), ".keras"),
        ("nested", nested_cnn(), ".keras"),
        ("skip", skip_cnn(), ".keras"),
    ]:
        path = folder / f"{name}{ext}"
        model.save(path)
        files[name] = path
    return files


def as_numpy(outputs):
    """The step's outputs (a NamedTuple of tensors) as the same NamedTuple of numpy arrays."""
    return tf.nest.map_structure(lambda t: None if t is None else t.numpy(), outputs)


def no_boxes(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The step's box inputs for n images without boxes: boxes, box_valid, tolerance."""
    return np.zeros((n, 4), np.float32), np.zeros(n, bool), np.zeros((n, 2), np.float32)


# ----------------------------------------------------------------------------- images


def random_image(rng: np.random.Generator, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """A smooth random RGB image with a bright blob (so maps are not trivial)."""
    w, h = size
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    pixels = np.asarray(image).copy()
    cx, cy = rng.integers(0, w), rng.integers(0, h)
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (max(w, h) / 8) ** 2))
    pixels = np.clip(pixels * (1 - blob[..., None]) + 255 * blob[..., None], 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture
def image_folder(tmp_path) -> Callable[[int], list[Path]]:
    """Write n random PNG images of model size; returns their paths."""

    def make(n: int, seed: int = 0, size: tuple[int, int] = (SIZE, SIZE)) -> list[Path]:
        rng = np.random.default_rng(seed)
        folder = tmp_path / "images"
        folder.mkdir(exist_ok=True)
        paths = []
        for i in range(n):
            path = folder / f"img_{seed}_{i:03d}.png"
            random_image(rng, size).save(path)
            paths.append(path)
        return paths

    return make


def noise_pngs(folder: Path, n: int, seed: int) -> list[Path]:
    """n random-noise PNGs of model size named 0.png .. n-1.png in folder (created)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a subprocess: its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def custom_model(model_path: Path, manifest: Path) -> list[str]:
    """Overrides that audit `manifest` with a fixture model file, pixels scaled to [0,1]."""
    return [
        "model=custom",
        f"model.path={model_path}",
        "model.preprocess=unit",
        f"data.manifest={manifest}",
    ]


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reference


def reference_gradcam(
    model: keras.Model, layer: str, image: np.ndarray, class_index: int, logits: bool = True
) -> np.ndarray:
    """The textbook Grad-CAM for ONE image (written independently of the pipeline).

    Scores are the pre-softmax ones (a Dense softmax head is undone by recomputing x@W+b from
    its input). Returns the map at the layer's resolution, normalised by its maximum.
    """
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        score_tensor = last.input
    elif logits and getattr(last.activation, "__name__", "") == "softmax":
        score_tensor = None  # recompute below from the Dense layer's input
    else:
        score_tensor = model.output
    feats = model.get_layer(layer).output
    outputs = [feats, score_tensor if score_tensor is not None else last.input]
    grad_model = keras.Model(model.inputs, outputs)
    x = tf.constant(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        conv, out = grad_model(x, training=False)
        if score_tensor is None:
            kernel, bias = last.get_weights()
            out = tf.matmul(out, kernel) + bias
        score = out[0, class_index]
    grads = tape.gradient(score, conv)[0].numpy()  # (h,w,C)
    conv = conv[0].numpy()
    weights = grads.mean(axis=(0, 1))  # (C,)
    cam = np.maximum((conv * weights).sum(axis=-1), 0.0)
    top = cam.max()
    return cam / top if top > 0 else cam
