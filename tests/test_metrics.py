"""Faithfulness metrics: batched = a per-image loop; real maps beat random ones."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import SIZE, compose_cfg, custom_model, no_boxes
from PIL import Image

from pipeline.cam import get_method
from pipeline.config import METRIC_NAMES, DemoConfig, ModelConfig
from pipeline.demo import ensure_demo
from pipeline.errors import ConfigError
from pipeline.manifest import read_manifest, resolve_labels
from pipeline.metrics import COLUMNS, build_metrics
from pipeline.model import load_model
from pipeline.run import run
from pipeline.step.build import build_step
from pipeline.step.forward import make_forward
from pipeline.step.targets import TARGET_LABEL

NAMES = list(COLUMNS)


def reference(model, image, heat, cls, steps):
    """Straight from the definitions, one image at a time (model outputs: softmax probs)."""
    flat = heat.ravel()
    order = np.argsort(-flat, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(flat.size)
    rank = rank.reshape(heat.shape)[..., None]

    def prob(pixels):
        return float(model(pixels[None] / 255.0).numpy()[0, cls])

    dele, ins = [], []
    mean = image.mean(axis=(0, 1), keepdims=True) * np.ones_like(image)
    for s in range(steps + 1):
        top = rank < (s * flat.size) // steps
        dele.append(prob(np.where(top, mean, image)))
        ins.append(prob(np.where(top, image, mean)))
    y, o = prob(image), prob(image * heat[..., None])
    return {
        "deletion_auc": np.trapezoid(dele) / steps,
        "insertion_auc": np.trapezoid(ins) / steps,
        "drop_in_confidence": max(0.0, y - o) / y,
        "increase_in_confidence": float(o > y),
    }


def test_batched_metrics_equal_per_image_definition(model_files):
    spec = ModelConfig(name="custom", path=str(model_files["rgb"]), preprocess="unit")
    loaded = load_model(spec)
    metrics = build_metrics(make_forward(loaded), NAMES, 5, loaded.input_size, 3)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    heat = rng.random((4, SIZE, SIZE)).astype(np.float32)
    targets = np.array([0, 1, 2, 3], np.int32)
    out = {k: v.numpy() for k, v in metrics(images, heat, targets).items()}
    model = keras.models.load_model(model_files["rgb"])
    for i in range(4):
        ref = reference(model, images[i].astype(np.float64), heat[i], int(targets[i]), 5)
        for col, value in ref.items():
            assert out[col][i] == pytest.approx(value, abs=1e-5), (col, i)


def test_unknown_metric_or_steps_are_refused_and_names_match_columns():
    assert list(COLUMNS) == list(METRIC_NAMES)  # the config's choices are the metrics built
    forward = lambda pixels: pixels  # noqa: E731 (never called: the check comes first)
    with pytest.raises(ConfigError, match=r"metrics.names has \['sparsity'\]"):
        build_metrics(forward, ["deletion", "sparsity"], 5, (8, 8), 3)
    with pytest.raises(ConfigError, match="metrics.steps=0; expected a positive integer"):
        build_metrics(forward, ["deletion"], 0, (8, 8), 3)


@pytest.mark.slow
def test_real_maps_beat_random_maps(tmp_path):
    """On the demo set (known object boxes, a trained CNN), Grad-CAM maps must delete the
    evidence faster and insert it faster than random maps of the same shape: each image
    scored with another image's map."""
    assets = ensure_demo(DemoConfig(str(tmp_path / "cache"), n_per_class=24, image_size=64))
    spec = ModelConfig(
        name="custom",
        path=str(assets.model),
        preprocess="unit",
        class_names=str(assets.class_names),
    )
    loaded = load_model(spec)
    table = read_manifest(assets.manifest)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in table["path"]])
    labels, _ = resolve_labels(table["label"], loaded.class_names)
    step = build_step(loaded, get_method("gradcam"), 3, TARGET_LABEL)
    n = len(images)
    res = step(images, labels.astype(np.int32), *no_boxes(n))
    real = res.explanation.map_input.numpy()
    # random maps of the same shape: another image's real map (the objects sit elsewhere)
    random = np.roll(real, 1, axis=0)
    metrics = build_metrics(make_forward(loaded), NAMES, 8, loaded.input_size, 3)
    targets = res.explanation.target_index
    got = {
        name: {k: float(v.numpy().mean()) for k, v in metrics(images, maps, targets).items()}
        for name, maps in (("real", real), ("random", random))
    }
    print(got)
    assert got["real"]["deletion_auc"] < got["random"]["deletion_auc"]
    assert got["real"]["insertion_auc"] > got["random"]["insertion_auc"]
    assert got["real"]["drop_in_confidence"] < got["random"]["drop_in_confidence"]


def test_metrics_columns_in_summary_and_class_table(model_files, tmp_path, image_folder):
    paths = image_folder(6)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label\n" + "\n".join(f"images/{p.name},{i % 3}" for i, p in enumerate(paths)) + "\n"
    )
    cfg = compose_cfg(
        f"output_dir={tmp_path / 'o'}",
        "progress=false",
        *custom_model(model_files["rgb"], manifest),
        "metrics.names=[deletion,insertion]",
        "metrics.steps=4",
    )
    result = run(cfg)
    summary = pd.read_parquet(result.output_dir / "summary.parquet")
    assert summary["deletion_auc"].between(0, 1).all() and summary["insertion_auc"].notna().all()
    assert summary["drop_in_confidence"].isna().all()  # not asked for
    classes = pd.read_parquet(result.output_dir / "classes.parquet").set_index("class_index")
    by = summary.groupby("target_index")["deletion_auc"].mean()
    np.testing.assert_allclose(classes.loc[by.index, "deletion_auc_mean"], by, rtol=1e-6)
