"""The compiled batch step against an independent per-image Grad-CAM."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import (
    N_CLASSES,
    SIZE,
    as_numpy,
    custom_model,
    no_boxes,
    reference_gradcam,
    tiny_cnn,
    write_csv,
)
from PIL import Image

from pipeline import load_heatmaps
from pipeline.cam import get_method
from pipeline.config import ModelConfig
from pipeline.model import load_model
from pipeline.run import run
from pipeline.step.build import build_step, upsample_bilinear
from pipeline.step.targets import TARGET_LABEL, TARGET_PRED


def _load(path, layer="auto", score="logits", preprocess="unit"):
    spec = ModelConfig(
        name="custom", path=str(path), layer=layer, preprocess=preprocess, score=score
    )
    return load_model(spec)


def _images(n: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 4, 4, channels)).astype(np.float32)
    up = tf.image.resize(coarse, (SIZE, SIZE)).numpy()
    return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)


def _run_step(loaded, images, labels, target=TARGET_LABEL):
    step = build_step(loaded, get_method("gradcam"), 3, target)
    n = len(images)
    return as_numpy(step(images, labels.astype(np.int32), *no_boxes(n)))


@pytest.mark.parametrize("name", ["rgb", "softmax_layer", "linear", "gray", "rgb_h5"])
def test_batch_equals_textbook_reference_with_mixed_targets(model_files, name):
    loaded = _load(model_files[name])
    channels = loaded.channels
    images = _images(10, seed=3, channels=channels)
    labels = np.arange(10) % N_CLASSES  # every image explains a different class
    res = _run_step(loaded, images, labels)
    model = keras.models.load_model(model_files[name])
    nonzero = 0
    for i in range(len(images)):
        ref = reference_gradcam(model, "last_conv", images[i] / 255.0, int(labels[i]))
        np.testing.assert_allclose(res.explanation.map[i], ref, atol=1e-4, err_msg=f"image {i}")
        nonzero += ref.max() > 0
        assert res.explanation.target_index[i] == labels[i]
    assert nonzero >= 5, "too many empty maps for the comparison to mean anything"


def test_batch_of_n_equals_n_batches_of_one(model_files):
    loaded = _load(model_files["rgb"])
    images = _images(9, seed=5)
    labels = np.full(9, -1)
    whole = _run_step(loaded, images, labels, target=TARGET_PRED)
    for i in range(len(images)):
        alone = _run_step(loaded, images[i : i + 1], labels[i : i + 1], target=TARGET_PRED)
        pairs = {
            "map": (whole.explanation.map, alone.explanation.map),
            "map_input": (whole.explanation.map_input, alone.explanation.map_input),
            "cam_max": (whole.explanation.cam_max, alone.explanation.cam_max),
            "pred_index": (whole.predictions.pred_index, alone.predictions.pred_index),
            "topk_score": (whole.predictions.topk_score, alone.predictions.topk_score),
            "border": (
                whole.explanation.stats.border_fraction,
                alone.explanation.stats.border_fraction,
            ),
        }
        for key, (w, a) in pairs.items():
            np.testing.assert_allclose(w[i], a[0], atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "src, dst", [((14, 14), (224, 224)), ((7, 5), (299, 160)), ((9, 9), (9, 9)), ((12, 8), (5, 3))]
)
def test_matrix_upsampling_equals_tf_image_resize(src, dst):
    """The step's upsampling (two matrix products) against the resize op it replaces, on maps
    with sharp edges, across odd ratios, no change of size, and shrinking."""
    rng = np.random.default_rng(7)
    maps = (rng.random((3, *src)) > 0.6).astype(np.float32) * rng.random((3, *src), np.float32)
    got = upsample_bilinear(tf.constant(maps), *dst).numpy()
    want = tf.image.resize(maps[..., None], dst, method="bilinear").numpy()[..., 0]
    assert got.shape == (3, *dst)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_step_upsamples_the_maps(model_files):
    """map_input is the bilinear upsampling of the normalised map, from the compiled step."""
    loaded = _load(model_files["rgb"])
    res = _run_step(loaded, _images(5, seed=2), np.full(5, -1), target=TARGET_PRED)
    up = tf.image.resize(res.explanation.map[..., None], (SIZE, SIZE), method="bilinear").numpy()[
        ..., 0
    ]
    np.testing.assert_allclose(res.explanation.map_input, np.clip(up, 0, 1), atol=1e-6)
    peaks = res.explanation.map.max(axis=(1, 2))
    assert np.all((peaks == 1.0) | (peaks == 0.0))  # each map normalised to its own maximum
    assert (peaks == 1.0).sum() >= 3 and res.explanation.map_input.std() > 0


def test_probs_score_explains_softmax_output(model_files):
    """model.score=probs differentiates the softmax output, not the logits."""
    loaded = _load(model_files["rgb"], score="probs")
    images = _images(4, seed=7)
    labels = np.arange(4) % N_CLASSES
    res = _run_step(loaded, images, labels)
    model = keras.models.load_model(model_files["rgb"])
    for i in range(4):
        ref = reference_gradcam(model, "last_conv", images[i] / 255.0, int(labels[i]), logits=False)
        np.testing.assert_allclose(res.explanation.map[i], ref, atol=1e-4)


def test_all_negative_evidence_gives_zero_map_not_nan(tmp_path):
    """A class with only negative channel weights: the map is all zeros, never NaN."""
    model = tiny_cnn(3, head="linear")
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[:, 0] = -np.abs(kernel[:, 0]) - 0.1  # class 0: every channel counts against it
    model.get_layer("logits").set_weights([kernel, bias])
    path = tmp_path / "neg.keras"
    model.save(path)
    loaded = _load(path)
    res = _run_step(loaded, _images(3), np.zeros(3))
    assert np.all(res.explanation.map == 0) and np.all(res.explanation.map_input == 0)
    assert np.all(res.explanation.cam_max == 0)
    assert not np.isnan(res.explanation.map).any()
    assert np.isnan(
        res.explanation.stats.cam_entropy
    ).all()  # undefined without mass: stored as null


def test_fixed_integer_target(model_files):
    loaded = _load(model_files["rgb"])
    res = _run_step(loaded, _images(4), np.full(4, -1), target=2)
    assert (res.explanation.target_index == 2).all()


def test_label_target_falls_back_to_prediction_without_label(model_files):
    loaded = _load(model_files["rgb"])
    res = _run_step(loaded, _images(4), np.array([1, -1, 3, -1]))
    assert list(res.explanation.target_index[[0, 2]]) == [1, 3]
    assert list(res.explanation.target_index[[1, 3]]) == list(res.predictions.pred_index[[1, 3]])


def test_skip_connection_model_full_tape_matches_reference(model_files):
    loaded = _load(model_files["skip"], layer="branch")
    assert loaded.tail is None  # the skip jumps over the layer: no cut possible
    images = _images(5, seed=11)
    labels = np.arange(5) % N_CLASSES
    res = _run_step(loaded, images, labels)
    model = keras.models.load_model(model_files["skip"])
    for i in range(5):
        ref = reference_gradcam(model, "branch", images[i] / 255.0, int(labels[i]))
        np.testing.assert_allclose(res.explanation.map[i], ref, atol=1e-4)


def test_pipeline_heatmaps_match_reference_including_short_last_batch(
    model_files, image_folder, make_cfg, tmp_path
):
    """11 images in batches of 4 (last batch of 3), labels as targets: saved maps == reference."""
    paths = image_folder(11, seed=2)
    labels = [i % N_CLASSES for i in range(11)]
    manifest = write_csv(
        tmp_path / "m.csv",
        "path,label",
        [f"{p.name and 'images/' + p.name},{lab}" for p, lab in zip(paths, labels)],
    )
    cfg = make_cfg(
        *custom_model(model_files["rgb"], manifest),
        "batch_size=4",
        "target=label",
    )
    result = run(cfg)
    summary = pd.read_parquet(result.output_dir / "summary.parquet")
    assert len(summary) == 11 and (summary["status"] == "ok").all()
    model = keras.models.load_model(model_files["rgb"])
    for i, path in enumerate(paths):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
        ref = reference_gradcam(model, "last_conv", pixels, labels[i])
        saved = load_heatmaps(result.output_dir, [i])[0].astype(np.float32)  # float16 chunks
        assert saved.shape == (SIZE // 2, SIZE // 2)
        np.testing.assert_allclose(saved, ref, atol=1e-3, err_msg=str(path))
        assert summary.loc[i, "target_index"] == labels[i]


def test_single_sigmoid_output_is_two_classes(tmp_path):
    """A binary model with one sigmoid unit: classes [negative, positive], scores [-z, z]."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", padding="same", name="last_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="logits")(x))
    path = tmp_path / "binary.keras"
    model.save(path)
    loaded = _load(path)
    assert loaded.binary and loaded.class_names == ["0", "1"]
    images = _images(6, seed=8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    res = _run_step(loaded, images, labels)
    p = model(images / 255.0).numpy()[:, 0]
    np.testing.assert_allclose(res.predictions.topk_score.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(res.predictions.pred_index, (p > 0.5).astype(int))
    np.testing.assert_allclose(
        res.explanation.target_score, np.where(labels == 1, p, 1 - p), atol=1e-6
    )
    pre = keras.Model(model.inputs, [model.get_layer("last_conv").output, model.layers[-2].output])
    for i in range(6):
        with tf.GradientTape() as tape:
            conv, pooled = pre(images[i : i + 1] / 255.0)
            kernel, bias = model.layers[-1].get_weights()
            z = (tf.matmul(pooled, kernel) + bias)[0, 0]
            score = z if labels[i] == 1 else -z
        grads = tape.gradient(score, conv)[0].numpy()
        cam = np.maximum((conv[0].numpy() * grads.mean(axis=(0, 1))).sum(-1), 0)
        ref = cam / cam.max() if cam.max() > 0 else cam
        np.testing.assert_allclose(res.explanation.map[i], ref, atol=1e-4)


def test_target_topk_explains_each_top_class_in_its_own_row(
    model_files, image_folder, make_cfg, tmp_path
):
    paths = image_folder(5, seed=21)
    manifest = write_csv(
        tmp_path / "m.csv", "path", [f"images/{p.name}" for p in paths] + ["images/missing.png"]
    )
    cfg = make_cfg(
        *custom_model(model_files["rgb"], manifest),
        "batch_size=4",
        "target=topk",
        "model.topk=3",
        "metrics.names=[insertion]",
        "metrics.steps=3",
        "max_error_rate=1",
    )
    result = run(cfg)
    summary = pd.read_parquet(result.output_dir / "summary.parquet")
    assert len(summary) == 6 * 3  # K rows per manifest row, errors included
    assert summary["row"].tolist() == [r for r in range(6) for _ in range(3)]
    assert summary["rank"].tolist() == [0, 1, 2] * 6
    ok = summary[summary["status"] == "ok"]
    assert (ok["target_index"] == [t[k] for t, k in zip(ok["topk_index"], ok["rank"])]).all()
    assert not ok.duplicated(["heatmap_file", "heatmap_index"]).any()  # a slot per (row, rank)
    assert ok["insertion_auc"].notna().all()
    model = keras.models.load_model(model_files["rgb"])
    for (_, row), saved in zip(ok.iterrows(), load_heatmaps(result.output_dir, ok)):
        pixels = np.asarray(Image.open(paths[row["row"]]).convert("RGB"), np.float32) / 255.0
        ref = reference_gradcam(model, "last_conv", pixels, int(row["target_index"]))
        np.testing.assert_allclose(saved.astype(np.float32), ref, atol=1e-3)
    classes = pd.read_parquet(result.output_dir / "classes.parquet")
    assert classes["n"].sum() == len(ok)  # every explained (image, class) pair counts once
