"""Load a preset or a model file, find the target layer, split the graph around it."""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from pipeline.config import ModelConfig, check_model
from pipeline.errors import ConfigError
from pipeline.quiet import CONSOLE

log = logging.getLogger(__name__)

PRESETS: dict[str, tuple[str, int]] = {  # name -> (keras.applications constructor, input side)
    "xception": ("Xception", 299),
    "resnet50": ("ResNet50", 224),
    "mobilenet_v2": ("MobileNetV2", 224),
    "efficientnet_b0": ("EfficientNetB0", 224),
}
SQUASHING = ("softmax", "sigmoid")


@dataclass
class LoadedModel:
    """A model ready for the compiled step.

    `head` maps images to the target layer's activations; `tail` maps those to scores. When the
    graph cannot be cut at the layer (a skip connection jumps over it), `tail` is None and `full`
    maps images to (activations, scores) under one tape instead.
    """

    model: keras.Model
    head: keras.Model | None
    tail: keras.Model | None
    full: keras.Model
    layer_name: str
    input_size: tuple[int, int]  # (height, width)
    channels: int
    class_names: list[str]
    output_activation: str  # "softmax" | "sigmoid" | "linear": applied to scores -> outputs
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    source: str  # a file path, or "keras.applications.<Name>"
    binary: bool = False  # one output unit: explained as two classes, [negative, positive]
    model_activation: str = "linear"  # the model's own last activation, whatever model.score


# ----------------------------------------------------------------------------- preprocessing


def _caffe(x: tf.Tensor) -> tf.Tensor:
    return x[..., ::-1] - tf.constant([103.939, 116.779, 123.68])


def _torch(x: tf.Tensor) -> tf.Tensor:
    mean = tf.constant([0.485, 0.456, 0.406])
    std = tf.constant([0.229, 0.224, 0.225])
    return (x / 255.0 - mean) / std


BUILTIN_PREPROCESS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "none": lambda x: x,
    "unit": lambda x: x / 255.0,
    "symmetric": lambda x: x / 127.5 - 1.0,
    "caffe": _caffe,
    "torch": _torch,
}


def resolve_preprocess(spec: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """Map `model.preprocess` to a function of a float32 (B,H,W,C) batch in 0..255."""
    if spec in BUILTIN_PREPROCESS:
        return BUILTIN_PREPROCESS[spec]
    if ":" not in spec:
        raise ConfigError(
            f"model.preprocess={spec!r} is unknown; expected one of "
            f"{', '.join(BUILTIN_PREPROCESS)} or package.module:function"
        )
    module_name, func_name = spec.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"model.preprocess={spec!r} cannot be imported: {exc}") from exc
    if not callable(func):
        raise ConfigError(f"model.preprocess={spec!r} is not a function")
    return func


# ----------------------------------------------------------------------------- class names


def imagenet_class_names() -> list[str] | None:
    """ImageNet names from Keras's cached index file, if a previous online use left it."""
    index = Path(keras.config.keras_home() if hasattr(keras.config, "keras_home") else "~/.keras")
    index = index.expanduser() / "models" / "imagenet_class_index.json"
    if not index.is_file():
        return None
    table = json.loads(index.read_text())
    return [table[str(i)][1] for i in range(len(table))]


def resolve_class_names(spec: object, n_classes: int, preset: bool) -> list[str]:
    """Class names from a list, a text file, ImageNet's index (presets) or indices."""
    if spec is None:
        names = imagenet_class_names() if preset and n_classes == 1000 else None
        return names or [str(i) for i in range(n_classes)]
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.class_names file not found: {spec}")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
    else:
        names = [str(n) for n in spec]
    if len(names) != n_classes:
        raise ConfigError(
            f"model.class_names has {len(names)} names but the model has {n_classes} outputs"
        )
    return names


# ----------------------------------------------------------------------------- layers


def _is_graph_model(layer: object) -> bool:
    """A Functional model, or a built Sequential (which wraps one)."""
    return _graph_of(layer) is not None


def _graph_of(model: object):
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def _output_shape(layer: keras.layers.Layer) -> tuple | None:
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    if isinstance(out, (list, tuple)):
        return None
    return tuple(out.shape)


def walk_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """All layers in graph order, nested models expanded in place (the nested model follows)."""
    found: list[keras.layers.Layer] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(walk_layers(layer))
        found.append(layer)
    return found


def spatial_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers whose single output is 4-D with spatial size > 1: the candidate target layers."""
    picks = []
    for layer in walk_layers(model):
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4 and ((shape[1] or 2) > 1 or (shape[2] or 2) > 1):
            picks.append(layer)
    return picks


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer named `name` (searching nested models), or the last spatial one for `auto`."""
    candidates = spatial_layers(model)
    if name == "auto":
        if not candidates:
            raise ConfigError(
                "model.layer=auto found no layer with a 4-D output of spatial size > 1; "
                "is this an image CNN?"
            )
        return candidates[-1]
    matches = [layer for layer in walk_layers(model) if layer.name == name]
    if not matches:
        names = ", ".join(layer.name for layer in candidates[-12:]) or "(none)"
        raise ConfigError(
            f"model.layer {name!r} not found; the last 4-D layers are: {names} "
            f"(or use model.layer=auto)"
        )
    layer = matches[-1]
    shape = _output_shape(layer)
    if shape is None or len(shape) != 4:
        raise ConfigError(
            f"model.layer {name!r} has output shape {shape}; Grad-CAM needs a 4-D "
            "(batch, height, width, channels) output"
        )
    return layer


def _contains(model: keras.Model, layer: keras.layers.Layer) -> bool:
    return any(inner is layer for inner in walk_layers(model))


def _output_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer producing the model's (single) output, looking into nested models."""
    graph = _graph_of(model)
    layer = graph.outputs[0]._keras_history.operation
    if isinstance(layer, keras.Model) and _is_graph_model(layer):
        return _output_layer(layer)
    return layer


def _activation_name(layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _linear_copy(layer: keras.layers.Layer) -> Callable:
    """A call that gives `layer`'s pre-activation output, leaving the user's layer untouched."""
    if isinstance(layer, (keras.layers.Softmax, keras.layers.Activation)):
        return lambda x, *args, **kwargs: x
    config = dict(layer.get_config(), activation="linear", name=f"{layer.name}_preact")
    clone = layer.__class__.from_config(config)
    clone.build(layer.input.shape)
    clone.set_weights(layer.get_weights())
    return lambda *args, **kwargs: clone(*args, **kwargs)


def _replay(model: keras.Model, inputs, swap: dict[int, tuple[keras.layers.Layer, Callable]]):
    """Run `model`'s graph on `inputs`; swap maps id(layer) -> (layer, call used instead)."""
    graph = _graph_of(model)

    def op_fn(op):
        if id(op) in swap:
            return swap[id(op)][1]
        if _is_graph_model(op) and any(_contains(op, layer) for layer, _ in swap.values()):
            return lambda x, *args, **kwargs: _replay(op, x, swap)
        return op

    return graph._run_through_graph(inputs, operation_fn=op_fn)


def guided_relu(x: tf.Tensor, max_value: float | None = None) -> tf.Tensor:
    """ReLU (or ReLU6) whose gradient passes only where the input and the gradient are positive:
    guided backpropagation (Springenberg et al.)."""

    @tf.custom_gradient
    def relu(x):
        y = tf.nn.relu(x) if max_value is None else tf.clip_by_value(x, 0.0, max_value)

        def grad(dy):
            gate = tf.cast(x > 0, dy.dtype) * tf.cast(dy > 0, dy.dtype)
            if max_value is not None:
                gate *= tf.cast(x < max_value, dy.dtype)
            return dy * gate

        return y, grad

    return relu(x)


class GuidedReLU(keras.layers.Layer):
    """A layer around guided_relu, so the replayed Keras graph can hold it."""

    def __init__(self, max_value: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_value = max_value

    def call(self, x):
        return guided_relu(x, self.max_value)


def _guided_call(layer: keras.layers.Layer) -> Callable | None:
    """The guided version of a layer with a ReLU in it, else None."""
    if isinstance(layer, keras.layers.ReLU):
        cap = float(layer.max_value) if layer.max_value is not None else None
        return GuidedReLU(cap)
    name = _activation_name(layer)
    if name not in ("relu", "relu6"):
        return None
    cap = 6.0 if name == "relu6" else None
    if isinstance(layer, keras.layers.Activation):
        return GuidedReLU(cap)
    linear = _linear_copy(layer)
    guided = GuidedReLU(cap)
    return lambda *args, **kwargs: guided(linear(*args, **kwargs))


def guided_model(loaded: LoadedModel) -> keras.Model:
    """Input -> scores (as explained) with every ReLU guided; the user's model is untouched."""
    model = loaded.model
    swap: dict[int, tuple[keras.layers.Layer, Callable]] = {}
    for layer in walk_layers(model):
        if not isinstance(layer, keras.Model):
            call = _guided_call(layer)
            if call is not None:
                swap[id(layer)] = (layer, call)
    out_layer = _output_layer(model)
    if loaded.output_activation in SQUASHING:  # explain pre-activation scores, as the maps do
        swap[id(out_layer)] = (out_layer, _linear_copy(out_layer))
    inp = keras.Input(shape=model.input_shape[1:], name="image")
    return keras.Model(inp, _replay(model, inp, swap), name="guided_backprop")


def split_model(
    model: keras.Model, layer: keras.layers.Layer, score: str
) -> tuple[keras.Model, keras.Model | None, keras.Model, str]:
    """Cut `model` at `layer`: (head, tail, full, output activation).

    The scores are the pre-activation ones when the model ends in softmax/sigmoid and
    score == "logits", so the maps follow the class evidence, as the Grad-CAM paper does;
    the returned activation turns them back into the model's outputs.
    """
    if _graph_of(model) is None:
        raise ConfigError(
            f"{type(model).__name__} is a subclassed model; Grad-CAM needs its layer graph: "
            "save a Functional or Sequential model"
        )
    out_layer = _output_layer(model)
    activation = _activation_name(out_layer)
    swap: dict[int, tuple[keras.layers.Layer, Callable]] = {}
    if activation in SQUASHING and score == "logits":
        swap[id(out_layer)] = (out_layer, _linear_copy(out_layer))
    else:  # no squashing, or score=probs: explain the model's output as it is
        activation = "linear"

    captured: dict[str, object] = {}

    def capture(*args, **kwargs):
        captured["acts"] = layer(*args, **kwargs)
        return captured["acts"]

    inp = keras.Input(shape=model.input_shape[1:], name="image")
    scores = _replay(model, inp, {**swap, id(layer): (layer, capture)})
    full = keras.Model(inp, [captured["acts"], scores], name="gradcam_full")
    head = keras.Model(inp, captured["acts"], name="gradcam_head")

    acts_in = keras.Input(shape=tuple(captured["acts"].shape[1:]), name="acts")
    try:
        tail_scores = _replay(model, inp, {**swap, id(layer): (layer, lambda *a, **k: acts_in)})
        tail = keras.Model(acts_in, tail_scores, name="gradcam_tail")
    except ValueError as exc:  # the graph reaches around the layer: tape the whole forward
        log.info("cannot cut the graph at %s (%s); taping the full forward pass", layer.name, exc)
        tail = None
    return head, tail, full, activation


# ----------------------------------------------------------------------------- loading


def _load_file(path: str, safe_mode: bool = True) -> keras.Model:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"model.path not found: {path}")
    if p.is_dir():
        return _load_savedmodel(p)
    if p.suffix not in (".keras", ".h5", ".hdf5"):
        raise ConfigError(
            f"model.path {path}: expected a .keras or .h5 file or a SavedModel folder"
        )
    try:
        return keras.models.load_model(p, compile=False, safe_mode=safe_mode)
    except Exception as exc:  # keras raises many types for unreadable files
        if safe_mode and ("safe_mode" in str(exc) or "Lambda" in str(exc)):
            raise ConfigError(
                f"{path} contains a Lambda layer or Python lambda (arbitrary code), which Keras's "
                "safe mode refuses to load; if you trust the file, pass model.safe_mode=false"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"cannot load model {path}: {type(exc).__name__}: {first}") from exc


def _load_savedmodel(folder: Path) -> keras.Model:
    """A Keras 2 SavedModel folder, rebuilt as a Keras 3 model with its layers.

    Keras 3 cannot read a SavedModel's layer graph; tf-keras (Keras 2) can. It re-saves the model
    as legacy HDF5, which Keras 3 loads with every layer and weight.
    """
    if not (folder / "saved_model.pb").is_file():
        raise ConfigError(
            f"model.path {folder} is a folder but not a SavedModel (no saved_model.pb)"
        )
    if not (folder / "keras_metadata.pb").is_file():
        raise ConfigError(
            f"SavedModel {folder} has no Keras layer graph (no keras_metadata.pb): model.export() "
            "and tf.saved_model.save() keep only the serving function, and Grad-CAM needs the "
            "layers. Save the model with model.save('model.keras') instead"
        )
    try:
        import tf_keras  # here: an optional extra, needed for this one format only
    except ImportError:
        raise ConfigError(
            "reading a Keras 2 SavedModel folder needs tf-keras: pip install -e '.[savedmodel]'"
        ) from None
    try:
        legacy = tf_keras.models.load_model(folder, compile=False)
        with tempfile.TemporaryDirectory() as tmp:
            legacy.save(Path(tmp) / "model.h5")
            return keras.models.load_model(Path(tmp) / "model.h5", compile=False)
    except Exception as exc:
        raise ConfigError(f"cannot load SavedModel {folder}: {type(exc).__name__}: {exc}") from exc


def _load_weights(model: keras.Model, weights: str) -> None:
    if not Path(weights).expanduser().is_file():
        raise ConfigError(f"model.weights file not found: {weights}")
    try:
        model.load_weights(Path(weights).expanduser())
    except Exception as exc:
        raise ConfigError(f"cannot load weights {weights}: {type(exc).__name__}: {exc}") from exc


def _load_preset(name: str, weights: str | None) -> keras.Model:
    constructor, side = PRESETS[name]
    build = getattr(keras.applications, constructor)
    try:
        return build(weights=weights, input_shape=(side, side, 3))
    except Exception as exc:
        raise ConfigError(f"cannot build preset {name} with weights={weights}: {exc}") from exc


def load_model(spec: ModelConfig) -> LoadedModel:
    """Load the preset or file `spec` names and prepare it for batched Grad-CAM.

    spec.path and spec.class_names are used as given: the caller resolves relative paths.
    """
    check_model(spec)
    prep = resolve_preprocess(spec.preprocess)
    model, source = _build_model(spec)
    model, (h, w, c) = _image_input(model, spec.input_size)
    if len(model.outputs) != 1 or len(model.output_shape) != 2:
        raise ConfigError(
            f"model output shape {model.output_shape}; expected one (batch, classes) output"
        )
    target = find_layer(model, spec.layer)
    head, tail, full, activation = split_model(model, target, spec.score)
    binary = model.output_shape[-1] == 1
    names = resolve_class_names(
        spec.class_names, 2 if binary else model.output_shape[-1], spec.name in PRESETS
    )
    log.info(
        "model %s: input %dx%dx%d, layer %s %s, %d classes, %s",
        source,
        h,
        w,
        c,
        target.name,
        tuple(target.output.shape[1:]),
        len(names),
        "cut after the layer" if tail is not None else "full tape",
        extra=CONSOLE,
    )
    return LoadedModel(
        model=model,
        head=head,
        tail=tail,
        full=full,
        layer_name=target.name,
        input_size=(h, w),
        channels=c,
        class_names=names,
        output_activation=activation,
        binary=binary,
        model_activation=_activation_name(_output_layer(model)),
        preprocess=prep,
        source=source,
    )


def _build_model(spec: ModelConfig) -> tuple[keras.Model, str]:
    """The preset or file (plus weights) `spec` names, and its source for the log."""
    if spec.name in PRESETS:
        return _load_preset(spec.name, spec.weights), f"keras.applications.{PRESETS[spec.name][0]}"
    if spec.name not in ("custom", "demo"):
        raise ConfigError(
            f"unknown model preset {spec.name!r}; expected one of "
            f"{', '.join(['custom', 'demo', *PRESETS])}"
        )
    model = _load_file(spec.path, spec.safe_mode)
    if spec.weights:  # a weights file on top of the model file (e.g. a later checkpoint)
        _load_weights(model, spec.weights)
    return model, str(spec.path)


def _image_input(
    model: keras.Model, input_size: list[int] | None
) -> tuple[keras.Model, tuple[int, int, int]]:
    """The model with a fixed (height, width, channels) image input, and that shape.

    A model that accepts any image size is rebuilt on `input_size` = [height, width].
    """
    if isinstance(model.input_shape, list) or len(model.input_shape) != 4:
        raise ConfigError(
            f"model input shape {model.input_shape}; expected one (batch, height, width, "
            "channels) image input"
        )
    _, h, w, c = model.input_shape
    if c not in (1, 3):
        raise ConfigError(f"model takes {c} channels; expected 1 (grayscale) or 3 (RGB)")
    if h is None or w is None:
        if not input_size:
            raise ConfigError(
                "the model accepts any image size: set model.input_size=[height,width]"
            )
        h, w = int(input_size[0]), int(input_size[1])
        model = _fix_input_size(model, (h, w, c))
    return model, (int(h), int(w), int(c))


def _fix_input_size(model: keras.Model, shape: tuple[int, int, int]) -> keras.Model:
    """Rebuild a size-agnostic graph on a fixed input so every layer has a static shape."""
    inp = keras.Input(shape=shape)
    return keras.Model(inp, _replay(model, inp, {}))
