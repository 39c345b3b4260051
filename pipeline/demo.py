"""The built-in demo: generated shape images with boxes and a small CNN trained on them, cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

CLASSES = ["circle", "square", "triangle", "cross", "watermarked"]
SHAPES = CLASSES[:4]
DEMO_VERSION = 2


@dataclass
class DemoAssets:
    manifest: Path
    model: Path
    class_names: Path


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gradcam-audit, or ~/.cache/gradcam-audit."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gradcam-audit"


def draw_example(rng: np.random.Generator, cls: int, size: int) -> tuple[Image.Image, tuple, str]:
    """One image of class `cls` on a textured background: (image, box x0,y0,x1,y1, group).

    `watermarked` is the demo's planted shortcut: any of the four shapes plus a small mark in the
    top-left corner, so the mark is the only thing that tells the class apart.
    """
    group = "dark" if rng.random() < 0.5 else "light"
    lo, hi = (10, 90) if group == "dark" else (150, 235)
    corners = rng.integers(lo, hi, size=(2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    background = corners[0] * (1 - t) + corners[1] * t  # vertical gradient (size,1,3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(np.broadcast_to(background, (size, size, 3)) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 4, size // 2))
    x0 = int(rng.integers(2, size - side - 2))
    y0 = int(rng.integers(2, size - side - 2))
    x1, y1 = x0 + side, y0 + side
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if group == "light":  # keep the object visible against its background
        colour = tuple(v // 3 for v in colour)
    else:
        colour = tuple(128 + v // 2 for v in colour)
    name = CLASSES[cls]
    marked = name == "watermarked"
    if marked:
        name = SHAPES[int(rng.integers(len(SHAPES)))]
    if name == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif name == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif name == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
    else:
        bar = max(3, side // 4)
        mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mid_x - bar // 2, y0, mid_x + bar // 2, y1), fill=colour)
        draw.rectangle((x0, mid_y - bar // 2, x1, mid_y + bar // 2), fill=colour)
    if marked:  # on top of everything, always in the same place
        m = max(4, size // 12)
        draw.rectangle((1, 1, m + 1, m + 1), fill=(255, 255, 255))
        draw.rectangle((1 + m // 4, 1 + m // 4, 1 + m - m // 4, 1 + m - m // 4), fill=(230, 0, 40))
    return image, (x0, y0, x1 + 1, y1 + 1), group


def make_arrays(n_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A training set in memory: images (N,size,size,3) uint8, labels (N,)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n_per_class * len(CLASSES)):
        cls = i % len(CLASSES)
        image, _, _ = draw_example(rng, cls, size)
        images.append(np.asarray(image))
        labels.append(cls)
    return np.stack(images), np.array(labels, np.int32)


def build_demo_model(size: int, n_classes: int = len(CLASSES)):
    """The small demo CNN: three conv blocks, global pooling, softmax. Takes [0,1] pixels."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def write_audit_set(folder: Path, n_per_class: int, size: int, seed: int) -> Path:
    """PNG images + manifest.csv (path, label, box, group) for the audit; returns the manifest."""
    rng = np.random.default_rng(seed + 1)  # a different draw from the training set
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["id,path,label,x0,y0,x1,y1,group"]
    for i in range(n_per_class * len(CLASSES)):
        cls = i % len(CLASSES)
        image, (x0, y0, x1, y1), group = draw_example(rng, cls, size)
        name = f"{CLASSES[cls]}_{i:04d}.png"
        image.save(images / name)
        lines.append(f"{name[:-4]},images/{name},{CLASSES[cls]},{x0},{y0},{x1},{y1},{group}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def ensure_demo(
    cache_dir: str | None, n_per_class: int, size: int, epochs: int, seed: int
) -> DemoAssets:
    """Generate and train the demo once; later calls return the cached files at once."""
    params = {"v": DEMO_VERSION, "n": n_per_class, "size": size, "epochs": epochs, "seed": seed}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = folder / f"demo-{key}"
    assets = DemoAssets(folder / "manifest.csv", folder / "model.keras", folder / "classes.txt")
    if (folder / "done.json").is_file():
        return assets
    log.info("building the demo once (cached in %s)", folder)
    work = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_audit_set(work, n_per_class, size, seed)
    (work / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    _train(work / "model.keras", n_per_class, size, epochs, seed)
    (work / "done.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    if folder.exists():  # another process finished first
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, folder)
    return assets


def _train(path: Path, n_per_class: int, size: int, epochs: int, seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    x, y = make_arrays(max(n_per_class * 4, 128), size, seed)
    model = build_demo_model(size)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x / 255.0, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    log.info(
        "demo model trained: accuracy %.3f on its training set", history.history["accuracy"][-1]
    )
    model.save(path)
