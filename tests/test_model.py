"""Model loading: files, channels, heads, nesting, layer choice, presets."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import N_CLASSES, SIZE, compose_cfg, no_boxes

from pipeline.cam import get_method
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model import PRESETS, find_layer, load_model
from pipeline.step.build import build_step
from pipeline.step.targets import TARGET_PRED


def _activation(layer) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return layer.activation.__name__


def _load(path, layer="auto", score="logits", **kw):
    args = dict(name="custom", path=str(path), layer=layer, preprocess="unit", score=score)
    return load_model(ModelConfig(**{**args, **kw}))


@pytest.mark.parametrize("name,channels", [("rgb", 3), ("gray", 1), ("rgb_h5", 3)])
def test_loads_files_and_infers_input(model_files, name, channels):
    loaded = _load(model_files[name])
    assert loaded.input_size == (SIZE, SIZE) and loaded.channels == channels
    assert loaded.layer_name == "last_conv"
    assert loaded.class_names == [str(i) for i in range(N_CLASSES)]
    assert loaded.tail is not None  # a plain chain is cut after the layer


@pytest.mark.parametrize("name", ["rgb", "softmax_layer"])
def test_softmax_head_is_explained_on_logits(model_files, name):
    loaded = _load(model_files[name])
    assert loaded.output_activation == "softmax"
    model = keras.models.load_model(model_files[name])
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype(np.float32)
    logits = loaded.tail(loaded.head(x)).numpy()
    probs = model(x).numpy()
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-5
    )
    assert not np.allclose(logits, probs)  # really the pre-activation scores
    # the user's model is untouched: it still outputs probabilities
    np.testing.assert_allclose(loaded.model(x).numpy(), probs, atol=1e-6)
    assert _activation(loaded.model.layers[-1]) == "softmax"


def test_linear_head_stays_linear(model_files):
    assert _load(model_files["linear"]).output_activation == "linear"
    assert _load(model_files["rgb"], score="probs").output_activation == "linear"


def test_nested_model_auto_layer_and_split(model_files):
    loaded = _load(model_files["nested"])
    assert loaded.layer_name == "outer_conv"
    inner = _load(model_files["nested"], layer="inner_conv2")
    assert inner.layer_name == "inner_conv2"
    model = keras.models.load_model(model_files["nested"])
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 3)).astype(np.float32)
    acts = inner.head(x).numpy()
    assert acts.shape == (2, SIZE, SIZE, 10)
    backbone = model.get_layer("backbone")
    ref = keras.Model(backbone.inputs, backbone.get_layer("inner_conv2").output)(x).numpy()
    np.testing.assert_allclose(acts, ref, atol=1e-5)
    probs = model(x).numpy()
    logits = inner.tail(acts).numpy()
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-5
    )


def test_auto_picks_last_spatial_layer_not_pooled_ones():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.MaxPooling2D(pool_size=28, name="to_1x1")(x)  # 4-D but 1x1: not a candidate
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    assert find_layer(model, "auto").name == "c2"


def test_unknown_layer_lists_candidates(model_files):
    with pytest.raises(ConfigError, match=r"'nope' not found.*conv1, pool1, last_conv"):
        _load(model_files["rgb"], layer="nope")


def test_non_spatial_layer_refused(model_files):
    with pytest.raises(ConfigError, match="4-D"):
        _load(model_files["rgb"], layer="gap")


def test_missing_and_bad_model_files(tmp_path):
    with pytest.raises(ConfigError, match="model.path not found"):
        _load(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    with pytest.raises(ConfigError, match="cannot load model"):
        _load(bad)
    (tmp_path / "m.onnx").write_text("x")
    with pytest.raises(ConfigError, match="expected a .keras or .h5"):
        _load(tmp_path / "m.onnx")


def test_class_names_file_and_count_check(model_files, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"c{i}" for i in range(N_CLASSES)) + "\n")
    assert _load(model_files["rgb"], class_names=str(names)).class_names[-1] == f"c{N_CLASSES - 1}"
    with pytest.raises(ConfigError, match="3 names but the model has 5 outputs"):
        _load(model_files["rgb"], class_names=["a", "b", "c"])


def test_preprocess_specs(model_files):
    loaded = _load(
        model_files["rgb"], preprocess="keras.applications.mobilenet_v2:preprocess_input"
    )
    x = np.full((1, 2, 2, 3), 255.0, np.float32)
    np.testing.assert_allclose(np.asarray(loaded.preprocess(x)), 1.0)
    with pytest.raises(ConfigError, match="unknown"):
        _load(model_files["rgb"], preprocess="zscore")
    with pytest.raises(ConfigError, match="cannot be imported"):
        _load(model_files["rgb"], preprocess="no_such_module:f")


def test_size_agnostic_model_needs_input_size(tmp_path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "any.keras"
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(path)
    with pytest.raises(ConfigError, match="model.input_size"):
        _load(path)
    loaded = _load(path, input_size=[24, 20])
    assert loaded.input_size == (24, 20) and loaded.head.output.shape[1:3] == (22, 18)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_offline_and_auto_agrees(preset):
    """Every preset with weights=null: builds offline; its configured layer is auto's choice."""
    cfg = compose_cfg(f"model={preset}", "model.weights=null")
    loaded = load_model(
        ModelConfig(
            name=cfg.model.name,
            layer=cfg.model.layer,
            preprocess=cfg.model.preprocess,
            score=cfg.model.score,
        )
    )
    assert find_layer(loaded.model, "auto").name == cfg.model.layer == loaded.layer_name
    side = PRESETS[preset][1]
    assert loaded.input_size == (side, side) and len(loaded.class_names) == 1000
    assert loaded.output_activation == "softmax"
    step = build_step(loaded, get_method("gradcam"), 5, TARGET_PRED)
    images = np.random.default_rng(0).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
    res = step(images, np.full(2, -1, np.int32), *no_boxes(2))
    assert res.explanation.map_input.shape == (2, side, side)
    assert np.isfinite(res.explanation.map.numpy()).all() and res.predictions.topk_index.shape == (
        2,
        5,
    )


def test_keras2_savedmodel_folder_loads_with_layers(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")  # in the test extra; skipped only outside it
    inputs = tf_keras.Input((SIZE, SIZE, 3))
    x = tf_keras.layers.Conv2D(6, 3, activation="relu", name="feat")(inputs)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    legacy = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax")(x))
    legacy.save(tmp_path / "sm")
    loaded = _load(tmp_path / "sm")
    assert loaded.layer_name == "feat" and loaded.output_activation == "softmax"
    x = np.random.default_rng(2).random((2, SIZE, SIZE, 3)).astype(np.float32)
    logits = loaded.tail(loaded.head(x)).numpy()
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), legacy(x).numpy(), atol=1e-5
    )


def test_exported_savedmodel_without_layers_is_refused(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.export(tmp_path / "served", verbose=False)
    with pytest.raises(ConfigError, match="no Keras layer graph"):
        _load(tmp_path / "served")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a SavedModel"):
        _load(tmp_path / "plain")


def test_custom_weights_file_is_applied(model_files, tmp_path):
    other = keras.models.load_model(model_files["rgb"])
    kernel, bias = other.get_layer("logits").get_weights()
    other.get_layer("logits").set_weights([kernel * 0 + 0.5, bias])
    weights = tmp_path / "other.weights.h5"
    other.save_weights(weights)
    loaded = _load(model_files["rgb"], weights=str(weights))
    np.testing.assert_allclose(loaded.model.get_layer("logits").get_weights()[0], 0.5)
    with pytest.raises(ConfigError, match="model.weights file not found"):
        _load(model_files["rgb"], weights=str(tmp_path / "none.weights.h5"))
