"""Every CAM method against a per-image numpy reference written from its paper's formula."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CONF_DIR, N_CLASSES, SIZE, compose_cfg, no_boxes
from omegaconf import OmegaConf

from pipeline.cam import METHODS, from_config, get_method
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model import load_model
from pipeline.step.build import build_step
from pipeline.step.targets import TARGET_LABEL

EPS = 1e-7


def _load(path, layer: str = "auto"):
    """A fixture model file as model=custom loads it (pixels scaled to [0,1])."""
    return load_model(ModelConfig(name="custom", path=str(path), layer=layer, preprocess="unit"))


def acts_and_grads(model: keras.Model, image: np.ndarray, cls: int):
    """Target-layer activations (h,w,C) and d(logit_cls)/d(acts), for ONE image."""
    last = model.layers[-1]
    grad_model = keras.Model(model.inputs, [model.get_layer("last_conv").output, last.input])
    with tf.GradientTape() as tape:
        conv, pooled = grad_model(tf.constant(image[None], tf.float32))
        kernel, bias = last.get_weights()
        score = (tf.matmul(pooled, kernel) + bias)[0, cls]
    return conv[0].numpy().astype(np.float64), tape.gradient(score, conv)[0].numpy()


def reference(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The textbook maps, straight from the papers (numpy, one image)."""
    if name in ("gradcam", "guided_gradcam"):  # guided Grad-CAM's map is Grad-CAM's
        cam = (a * g.mean(axis=(0, 1))).sum(-1)
    elif name == "gradcampp":
        alpha = g**2 / (2 * g**2 + a.sum(axis=(0, 1)) * g**3 + EPS)
        alpha = np.where(g != 0, alpha, 0)
        cam = (a * (alpha * np.maximum(g, 0)).sum(axis=(0, 1))).sum(-1)
    elif name == "hirescam":
        cam = (g * a).sum(-1)
    elif name == "xgradcam":
        cam = (a * ((g * a).sum(axis=(0, 1)) / (a.sum(axis=(0, 1)) + EPS))).sum(-1)
    elif name == "layercam":
        cam = (np.maximum(g, 0) * a).sum(-1)
    elif name == "eigencam":
        flat = a.reshape(-1, a.shape[-1])
        centred = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if np.corrcoef(proj, flat.sum(1))[0, 1] < 0:
            proj = -proj
        cam = proj.reshape(a.shape[:2])
    else:
        raise AssertionError(name)
    cam = np.maximum(cam, 0)
    return cam / cam.max() if cam.max() > 0 else cam


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    up = tf.image.resize(coarse, (SIZE, SIZE)).numpy()
    return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)


GRADIENT_METHODS = sorted(set(METHODS) - {"scorecam"})


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_method_matches_paper_formula_and_is_batch_independent(model_files, name):
    cfg = compose_cfg(f"cam={name}")  # every cam= config group composes
    assert cfg.cam.name == name
    loaded = _load(model_files["rgb"])
    step = build_step(loaded, get_method(name), 3, TARGET_LABEL)
    images = _images(9, seed=4)
    labels = (np.arange(9) % N_CLASSES).astype(np.int32)

    def maps(idx):
        n = len(idx)
        return step(images[idx], labels[idx], *no_boxes(n)).explanation.map.numpy()

    batch = maps(list(range(9)))
    model = keras.models.load_model(model_files["rgb"])
    nonzero = 0
    for i in range(9):
        a, g = acts_and_grads(model, images[i] / 255.0, int(labels[i]))
        ref = reference(name, a, g)
        np.testing.assert_allclose(batch[i], ref, atol=1e-4, err_msg=f"{name} image {i}")
        np.testing.assert_allclose(batch[i], maps([i])[0], atol=1e-5)
        nonzero += ref.max() > 0
    assert nonzero >= 5


def test_scorecam_matches_per_image_definition(model_files):
    """Score-CAM per image: mask with each kept channel, softmax the target's outputs."""
    loaded = _load(model_files["rgb"])
    method = get_method("scorecam", max_channels=7, channels_per_pass=3)  # 12 channels in all
    step = build_step(loaded, method, 3, TARGET_LABEL)
    images = _images(5, seed=6)
    labels = (np.arange(5) % N_CLASSES).astype(np.int32)
    batch = step(images, labels, *no_boxes(5)).explanation.map.numpy()
    model = keras.models.load_model(model_files["rgb"])
    features = keras.Model(model.inputs, model.get_layer("last_conv").output)
    for i in range(5):
        x = images[i].astype(np.float64)
        a = features(x[None] / 255.0).numpy()[0]  # (h,w,K)
        keep = np.argsort(-a.mean(axis=(0, 1)), kind="stable")[:7]
        scores = []
        for ch in keep:
            up = tf.image.resize(a[..., ch : ch + 1], (SIZE, SIZE)).numpy()[..., 0]
            mask = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else 0 * up
            scores.append(model((x * mask[..., None])[None] / 255.0).numpy()[0, labels[i]])
        w = np.exp(scores) / np.exp(scores).sum()
        cam = np.maximum((a[..., keep] * w).sum(-1), 0)
        ref = cam / cam.max() if cam.max() > 0 else cam
        np.testing.assert_allclose(batch[i], ref, atol=1e-4, err_msg=f"image {i}")
    alone = step(images[:1], labels[:1], *no_boxes(1))
    np.testing.assert_allclose(alone.explanation.map.numpy()[0], batch[0], atol=1e-5)


def test_methods_differ():
    """Sanity: the plugins are not all the same formula."""
    rng = np.random.default_rng(0)
    acts = tf.constant(rng.random((2, 5, 5, 6)), tf.float32)
    grads = tf.constant(rng.normal(size=(2, 5, 5, 6)), tf.float32)
    outs = {
        n: get_method(n)(acts, grads).numpy() for n in GRADIENT_METHODS if n != "guided_gradcam"
    }
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(outs[a], outs[b]), (a, b)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(float)
    rb = np.argsort(np.argsort(b.ravel())).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def test_model_randomisation_sanity_check(model_files, tmp_path):
    """Adebayo et al.: randomising the weights from the top layer down must change the maps.

    A method whose maps survive the randomisation explains the input, not the model. The
    rank correlation with the trained model's maps is reported per method and must fall."""
    model = keras.models.load_model(model_files["rgb"])
    keras.utils.set_random_seed(123)
    random = keras.models.clone_model(model)  # fresh initialisation of every layer
    trained_path, random_path = model_files["rgb"], tmp_path / "random.keras"
    # cascade: copy the trained weights back into the layers below the target layer
    for layer in random.layers:
        if layer.name == "conv1":
            layer.set_weights(model.get_layer("conv1").get_weights())
    random.save(random_path)
    images = _images(6, seed=9)
    labels = (np.arange(6) % N_CLASSES).astype(np.int32)
    report = {}
    for name in sorted(METHODS):
        maps = []
        for path in (trained_path, random_path):
            loaded = _load(path, layer="last_conv")
            step = build_step(loaded, get_method(name), 3, TARGET_LABEL)
            out = step(images, labels, *no_boxes(6))
            maps.append(out.explanation.map.numpy())
        report[name] = float(np.mean([_spearman(a, b) for a, b in zip(*maps)]))
    print("rank correlation trained vs randomised:", report)
    for name, rho in report.items():
        assert rho < 0.6, f"{name}: maps barely change when the model is randomised ({rho:.2f})"


def test_guided_gradcam_matches_manual_guided_backprop(model_files, tmp_path):
    """Guided backprop re-implemented by hand on the tiny model's weights (tf ops, a guided
    ReLU of its own), times the upsampled Grad-CAM map."""
    loaded = _load(model_files["rgb"])
    step = build_step(loaded, get_method("guided_gradcam"), 3, TARGET_LABEL)
    images = _images(3, seed=12)
    labels = np.array([0, 1, 2], np.int32)
    out = step(images, labels, *no_boxes(3))
    model = keras.models.load_model(model_files["rgb"])
    w1, b1 = model.get_layer("conv1").get_weights()
    w2, b2 = model.get_layer("last_conv").get_weights()
    wd, bd = model.get_layer("logits").get_weights()

    @tf.custom_gradient
    def grelu(x):
        return tf.nn.relu(
            x
        ), lambda dy: dy * tf.cast(x > 0, tf.float32) * tf.cast(dy > 0, tf.float32)

    for i in range(3):
        x = tf.constant(images[i : i + 1] / 255.0, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            h = grelu(tf.nn.conv2d(x, w1, 1, "SAME") + b1)
            h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            h = grelu(tf.nn.conv2d(h, w2, 1, "SAME") + b2)
            logit = (tf.reduce_mean(h, axis=(1, 2)) @ wd + bd)[0, labels[i]]
        grad = tape.gradient(logit, x)[0].numpy()
        expected = grad * out.explanation.map_input.numpy()[i][..., None]
        np.testing.assert_allclose(out.explanation.guided.numpy()[i], expected, atol=1e-5)
    assert np.abs(out.explanation.guided.numpy()).max() > 0


def test_eigen_smooth_is_first_component_of_contributions(model_files):
    loaded = _load(model_files["rgb"])
    step = build_step(loaded, get_method("gradcam", eigen_smooth=True), 3, TARGET_LABEL)
    images = _images(4, seed=14)
    labels = np.arange(4, dtype=np.int32)
    got = step(images, labels, *no_boxes(4)).explanation.map.numpy()
    model = keras.models.load_model(model_files["rgb"])
    for i in range(4):
        a, g = acts_and_grads(model, images[i] / 255.0, int(labels[i]))
        contrib = (a * g.mean(axis=(0, 1))).reshape(-1, a.shape[-1])
        centred = contrib - contrib.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        if np.corrcoef(proj, contrib.sum(1))[0, 1] < 0:
            proj = -proj
        cam = np.maximum(proj.reshape(a.shape[:2]), 0)
        np.testing.assert_allclose(got[i], cam / cam.max(), atol=1e-4)


def test_aug_smooth_averages_flipped_and_brightened_maps(model_files):
    loaded = _load(model_files["rgb"])
    kwargs = dict(topk=3, target=TARGET_LABEL)
    smooth = build_step(loaded, get_method("gradcam", aug_smooth=True), **kwargs)
    plain = build_step(loaded, get_method("gradcam"), **kwargs)
    images = _images(3, seed=15)
    labels = np.arange(3, dtype=np.int32)
    zeros = no_boxes(3)
    got = smooth(images, labels, *zeros).explanation.map.numpy()
    total = 0
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            aug = images.astype(np.float32)[:, :, ::-1] if flip else images.astype(np.float32)
            aug = np.clip(aug * factor, 0, 255)
            # the plain step takes uint8: round-trip the brightness change like the pipeline's
            m = plain(np.round(aug).astype(np.uint8), labels, *zeros).explanation.map.numpy()
            total = total + (m[:, :, ::-1] if flip else m)
    mean = total / 6
    expected = mean / mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got, expected, atol=0.02)  # rounding to uint8 in the reference
    assert not np.allclose(got, plain(images, labels, *zeros).explanation.map.numpy(), atol=1e-3)


def test_every_cam_config_builds_its_method_from_its_own_options():
    """conf/cam/<name>.yaml and METHODS name the same methods; each builds from its group."""
    names = sorted(p.stem for p in (CONF_DIR / "cam").glob("*.yaml"))
    assert names == sorted(METHODS)
    for name in names:
        cam = OmegaConf.to_object(compose_cfg(f"cam={name}", "cam.aug_smooth=true").cam)
        method = from_config(cam)
        assert type(method) is METHODS[name] and method.name == name and method.aug_smooth
    score = from_config(OmegaConf.to_object(compose_cfg("cam=scorecam", "cam.batch_size=3").cam))
    assert (score.channels_per_pass, score.max_channels) == (3, 64)
    assert from_config(OmegaConf.to_object(compose_cfg("cam.eigen_smooth=true").cam)).eigen_smooth
    with pytest.raises(ConfigError, match="cam.eigen_smooth does not apply to cam=scorecam"):
        from_config(OmegaConf.to_object(compose_cfg("cam=scorecam", "cam.eigen_smooth=true").cam))
    with pytest.raises(ConfigError, match="unknown cam method 'nope'"):
        from_config(OmegaConf.to_object(compose_cfg("cam.name=nope").cam))
