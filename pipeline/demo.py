"""The built-in demo: generated shape images with boxes and a small CNN trained on them, cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from pipeline.config import DemoConfig
from pipeline.quiet import CONSOLE

log = logging.getLogger(__name__)

CLASSES = ["circle", "square", "triangle", "cross", "watermarked"]
SHAPES = CLASSES[:4]
DEMO_VERSION = 4
FAINT_SHARE = 0.15  # untagged images of every class whose object is faint too: faintness alone
# must tell no class apart, or a model learns "faint -> the tagged class" instead of the tag


@dataclass(frozen=True)
class Shortcut:
    """A tag planted on a share of one class's images, whose object is then drawn faint, so a
    model can only get those images right by reading the tag (a "Clever Hans" sub-population).
    share=1 with faint=False is a whole-class shortcut (the demo's `watermarked`)."""

    cls: str
    share: float
    kind: str = "patch"  # patch | text | bar
    place: str = "br"  # tl tr bl br t b l r
    faint: bool = True


# the demo's planted shortcuts: a whole class, and a third of another class
DEMO_SHORTCUTS = (
    Shortcut("watermarked", 1.0, "patch", "tl", faint=False),
    Shortcut("triangle", 0.3, "text", "br"),
)


@dataclass
class DemoAssets:
    manifest: Path
    model: Path
    class_names: Path


@dataclass
class Example:
    image: Image.Image
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    group: str
    tagged: bool


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gradcam-audit, or ~/.cache/gradcam-audit."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "gradcam-audit"


def _background(rng: np.random.Generator, size: int, group: str) -> Image.Image:
    """A noisy vertical gradient, dark or light."""
    lo, hi = (10, 90) if group == "dark" else (150, 235)
    corners = rng.integers(lo, hi, size=(2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    background = corners[0] * (1 - t) + corners[1] * t  # (size,1,3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(np.broadcast_to(background, (size, size, 3)) + noise, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _shape(draw: ImageDraw.ImageDraw, name: str, box: tuple, colour: tuple) -> None:
    x0, y0, x1, y1 = box
    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "square":
        draw.rectangle(box, fill=colour)
    elif name == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
    else:  # cross
        bar = max(3, (x1 - x0) // 4)
        mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mid_x - bar // 2, y0, mid_x + bar // 2, y1), fill=colour)
        draw.rectangle((x0, mid_y - bar // 2, x1, mid_y + bar // 2), fill=colour)


def tag_box(place: str, size: int) -> tuple[int, int, int, int]:
    """Where a tag of side size//8 sits: a corner or the middle of an edge, 1 px in."""
    m = max(4, size // 8)
    far = size - m - 2
    mid = (size - m) // 2
    x = 1 if "l" in place else far if "r" in place else mid
    y = 1 if "t" in place else far if "b" in place else mid
    return x, y, x + m, y + m


def draw_tag(draw: ImageDraw.ImageDraw, kind: str, place: str, size: int) -> None:
    """A small fixed artefact: a two-colour patch, a text-like tag or a ruler-like bar."""
    x0, y0, x1, y1 = tag_box(place, size)
    m = x1 - x0
    if kind == "patch":
        draw.rectangle((x0, y0, x1, y1), fill=(255, 255, 255))
        q = m // 4
        draw.rectangle((x0 + q, y0 + q, x1 - q, y1 - q), fill=(230, 0, 40))
    elif kind == "text":  # white label with dark "glyph" strokes, like a copyright line
        draw.rectangle((x0, y0 + m // 4, x1, y1 - m // 4), fill=(250, 250, 210))
        for i in range(x0 + 1, x1 - 1, 3):
            draw.line((i, y0 + m // 4 + 2, i, y1 - m // 4 - 2), fill=(20, 20, 20))
    else:  # bar: yellow ruler with black ticks
        draw.rectangle((x0, y0 + m // 3, x1, y1 - m // 3), fill=(250, 210, 0))
        for i in range(x0, x1 + 1, 2):
            draw.point((i, y0 + m // 3), fill=(0, 0, 0))


def draw_example(
    rng: np.random.Generator,
    name: str,
    size: int,
    tag: Shortcut | None = None,
    faint: bool = False,
) -> Example:
    """One image of shape `name` (or `watermarked`: any shape) on a textured background.

    With `tag`, the tag is drawn on top, and the object faint when the shortcut says so.
    """
    faint = faint or (tag is not None and tag.faint)
    group = "dark" if rng.random() < 0.5 else "light"
    image = _background(rng, size, group)
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(size // 4, size // 2))
    x0 = int(rng.integers(2, size - side - 2))
    y0 = int(rng.integers(2, size - side - 2))
    colour = rng.integers(0, 256, 3)
    if group == "light":  # keep the object visible against its background
        colour = colour // 3
    else:
        colour = 128 + colour // 2
    if faint:  # barely above the background: the tag is the cue
        mean = np.asarray(image, np.float64)[y0 : y0 + side, x0 : x0 + side].mean(axis=(0, 1))
        colour = mean + 0.3 * (colour - mean)
    if name == "watermarked":
        name = SHAPES[int(rng.integers(len(SHAPES)))]
    _shape(draw, name, (x0, y0, x0 + side, y0 + side), tuple(int(v) for v in colour))
    if tag is not None:  # on top of everything, always in the same place
        draw_tag(draw, tag.kind, tag.place, size)
    return Example(image, (x0, y0, x0 + side + 1, y0 + side + 1), group, tag is not None)


def draw_class(
    rng: np.random.Generator, classes: list[str], cls: int, size: int, shortcuts: tuple
) -> Example:
    """One example of classes[cls], tagged with the class's shortcut at its share."""
    tag = next((s for s in shortcuts if s.cls == classes[cls]), None)
    if tag is not None and rng.random() >= tag.share:
        tag = None
    faint = tag is None and rng.random() < FAINT_SHARE
    return draw_example(rng, classes[cls], size, tag, faint)


def make_arrays(
    n_per_class: int,
    size: int,
    seed: int,
    classes: list[str] = CLASSES,
    shortcuts: tuple = DEMO_SHORTCUTS,
) -> tuple[np.ndarray, np.ndarray]:
    """A training set in memory: images (N,size,size,3) uint8, labels (N,)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n_per_class * len(classes)):
        cls = i % len(classes)
        images.append(np.asarray(draw_class(rng, classes, cls, size, shortcuts).image))
        labels.append(cls)
    return np.stack(images), np.array(labels, np.int32)


def build_demo_model(size: int, n_classes: int = len(CLASSES)):
    """The small demo CNN: three conv blocks, global pooling, softmax. Takes [0,1] pixels."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="demo_cnn")


def write_audit_set(
    folder: Path,
    n_per_class: int,
    size: int,
    seed: int,
    classes: list[str] = CLASSES,
    shortcuts: tuple = DEMO_SHORTCUTS,
    boxes: bool = True,
) -> Path:
    """PNG images + manifest.csv (id, path, label[, box, group], tagged) for the audit.

    `tagged` records which images carry a planted tag (the truth a strategy should recover).
    Returns the manifest.
    """
    rng = np.random.default_rng(seed + 1)  # a different draw from the training set
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    head = "id,path,label,x0,y0,x1,y1,group,tagged" if boxes else "id,path,label,tagged"
    lines = [head]
    for i in range(n_per_class * len(classes)):
        cls = i % len(classes)
        ex = draw_class(rng, classes, cls, size, shortcuts)
        name = f"{classes[cls]}_{i:04d}.png"
        ex.image.save(images / name)
        box = ",".join(str(v) for v in ex.box) + f",{ex.group}," if boxes else ""
        lines.append(f"{name[:-4]},images/{name},{classes[cls]},{box}{int(ex.tagged)}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def ensure_demo(demo: DemoConfig) -> DemoAssets:
    """Generate and train the demo once; later calls return the cached files at once."""
    cache_dir, n_per_class, size = demo.cache_dir, demo.n_per_class, demo.image_size
    epochs, seed = demo.epochs, demo.seed
    params = {"v": DEMO_VERSION, "n": n_per_class, "size": size, "epochs": epochs, "seed": seed}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = folder / f"demo-{key}"
    assets = DemoAssets(folder / "manifest.csv", folder / "model.keras", folder / "classes.txt")
    if (folder / "done.json").is_file():
        return assets
    log.info("building the demo once (cached in %s)", folder, extra=CONSOLE)
    work = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_audit_set(work, n_per_class, size, seed)
    (work / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    x, y = make_arrays(max(n_per_class * 4, 128), size, seed)
    train_model(work / "model.keras", x, y, len(CLASSES), epochs, seed)
    (work / "done.json").write_text(json.dumps(params) + "\n", encoding="utf-8")
    if folder.exists():  # another process finished first
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, folder)
    return assets


def train_model(
    path: Path, x: np.ndarray, y: np.ndarray, n_classes: int, epochs: int, seed: int
) -> float:
    """Train the demo CNN on images x (N,s,s,3) uint8 and labels y; save it; training accuracy."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()  # the same model whatever ran before
    model = build_demo_model(x.shape[1], n_classes)
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
    return float(history.history["accuracy"][-1])
