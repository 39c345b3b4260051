"""Typed config schema (registered in Hydra's ConfigStore) and the checks of its values."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf.errors import MissingMandatoryValue

from pipeline.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = (
        "demo"  # preset: demo | custom | xception | resnet50 | mobilenet_v2 | efficientnet_b0
    )
    path: str | None = None  # custom: .keras, .h5 or a SavedModel folder
    weights: str | None = None  # presets: imagenet | null | a weights file
    layer: str = "auto"  # target layer name, or auto: last 4-D layer with spatial size > 1
    preprocess: str = "none"  # none|unit|symmetric|caffe|torch|package.module:function
    class_names: Any = None  # a list, a text file (one name per line), or null
    score: str = "logits"  # logits: explain pre-softmax scores; probs: the model's output
    topk: int = 5
    input_size: list[int] | None = None  # [height, width] when the model does not fix it
    safe_mode: bool = True  # Keras safe mode: refuse Lambda layers (arbitrary code) in files


@dataclass
class CamConfig:
    name: str = "gradcam"
    max_channels: int = 64  # scorecam: channels kept (highest mean activation)
    batch_size: int = 8  # scorecam: channels per forward pass
    aug_smooth: bool = False  # average the maps over flips and brightness x0.9/x1.1 (6 passes)
    eigen_smooth: bool = False  # first principal component of the channel contributions


@dataclass
class DataConfig:
    manifest: str | None = None  # CSV, Parquet or JSON Lines; null with model=demo: the demo set
    num_parallel_calls: int = -1  # decode threads; -1 = one per core (at most 16)
    prefetch: int = 2  # batches decoded ahead of the model
    max_pixels: int = 178_956_970  # larger images are refused before decoding
    resize: str = "bilinear"  # to the model input: bilinear = tf.image.resize without
    # antialiasing, as Keras' image_dataset_from_directory (TF decodes plain files in the
    # graph); pillow = Pillow's antialiased BILINEAR (every row decoded in Python)


@dataclass
class HeatmapsConfig:
    enabled: bool = True
    format: str = "chunks"  # chunks: one float16 array file per committed chunk; files: one
    # float32 .npy per row
    resolution: str = "layer"  # layer: target layer's grid; input: model input size


@dataclass
class OverlaysConfig:
    enabled: bool = True  # false: no overlays at all (= select=none)
    select: str = "auto"  # all | report (the rows report.html shows, rendered after the run
    # from the stored maps) | none | auto: all up to max_rows_all rows, report beyond
    max_rows_all: int = 10_000
    alpha: float = 0.4
    max_side: int = 512
    quality: int = 90


@dataclass
class DemoConfig:
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/gradcam-audit (or ~/.cache/...)
    n_per_class: int = 64
    image_size: int = 96
    epochs: int = 12
    seed: int = 0


@dataclass
class ReportConfig:
    enabled: bool = True  # build the class report at the end of every run
    group_by: str = "target"  # target: the explained class; label: the true label
    z_threshold: float = 3.0  # robust z-score (leave-one-out median/MAD) that makes an outlier
    min_gap: float = 0.15  # ... and the least absolute gap to the other classes' median
    fixed_min_gap: float = 0.05  # least gap in peak spread for fixed-location attention ...
    fixed_share: float = 0.8  # ... whose peaks sit on one spot in this share of images
    mad_floor: float = 0.02  # MAD never below this (near-identical classes are not outliers)
    min_class_n: int = 3  # classes with fewer ok rows are reported but neither flagged nor compared
    examples: int = 6  # off-object examples shown per flagged class
    misclassified: int = 12  # most confident wrong predictions shown (0: none)
    group_min_n: int = 3  # subgroups with fewer rows are left out of gap checks
    accuracy_gap: float = 0.1  # flag a class whose group accuracies differ by more
    attention_gap: float = (
        0.15  # ... or whose group attention (energy_in_box/border) differs by more
    )


@dataclass
class StatsConfig:
    pointing_tolerance: float = 15.0  # pointing game: a hit when the peak lies within this
    # many pixels of the original image from the box (TorchRay's 15 px); 0: inside the box


@dataclass
class StrategiesConfig:
    enabled: bool = True  # cluster each class's maps into attention strategies (SpRAy-style)
    min_class_n: int = 20  # classes with fewer ok rows are not clustered (cluster = -1)
    max_clusters: int = 8  # the eigengap chooses the number of clusters in [1, max_clusters]
    grid: int = 12  # maps are area-pooled to grid x grid and L1-normalised before clustering
    neighbors: int = 10  # k of the symmetric k-nearest-neighbour graph
    examples: int = 6  # most typical members listed (and shown) per cluster
    min_cluster_n: int = 10  # smaller clusters are listed but never flagged
    weak_evidence: float = 0.25  # clusters whose median cam_max is below this share of the
    # run's are not flagged: a map normalised from almost no gradient is noise
    min_accuracy: float = 0.5  # labelled clusters the model gets mostly wrong are not flagged
    fixed_share: float = 0.9  # a fixed-spot cluster has its peak on one spot (the same cell of
    # the layer's grid) in at least this share of its images ...
    moving_share: float = 0.5  # ... and the class's other images in at most this share
    min_gap: float = 0.15  # least excess of border mass (or lack of in-box mass) over chance
    # and over the class's other clusters
    tight: float = 0.7  # a flagged cluster's maps are near-identical: its radius (mean distance
    # to its centre) is at most this share of the class's other images'
    virelay: bool = False  # also export the analysis for the ViRelAy viewer (extra [virelay])


@dataclass
class MetricsConfig:
    names: list[str] = field(default_factory=list)  # deletion, insertion, drop_in_confidence,
    # increase_in_confidence: faithfulness of the maps, per image (off by default: they cost
    # forward passes)
    steps: int = 10  # deletion/insertion curve steps (each one forward pass per batch)


@dataclass
class ShardConfig:
    count: int = 1  # split the manifest into this many shards ...
    index: int = 0  # ... and process this one: every count-th block of batch_size x
    # chunk_batches rows, starting with block `index` (the blocks are the run's chunks)


@dataclass
class MergeConfig:
    allow_partial: bool = False  # merge the complete shards even when some are missing


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    heatmaps: HeatmapsConfig = field(default_factory=HeatmapsConfig)
    overlays: OverlaysConfig = field(default_factory=OverlaysConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    devices: str = "auto"  # auto: TensorFlow's placement; all: MirroredStrategy over them all
    precision: str = "float32"  # float32 | mixed_float16 (GPUs; maps stay float32)
    jit_compile: bool = False  # XLA-compile the batch step
    target: Any = "pred"  # pred | label | an integer class index
    batch_size: int = 32
    seed: int = 0
    output_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"
    resume: bool = True  # continue what output_dir holds; false: start over in it
    chunk_batches: int = 8  # batches per committed chunk (the unit of resume)
    deterministic: bool = True  # TensorFlow op determinism: reruns give bit-identical results
    max_error_rate: float = 0.05  # exit code 3 when a larger share of rows are errors
    progress: bool = True  # tqdm bar
    writer_threads: int = 2  # threads writing .npy and overlay files
    stop_grace_s: float = 30.0  # after SIGTERM/SIGINT: seconds to finish the chunk in flight
    log_level: str = "info"  # info: no TensorFlow C++ lines or known warnings; debug: everything


OVERLAY_MODES = ("auto", "all", "report", "none")
TARGETS = ("pred", "label", "topk")  # target's named choices; or a class index >= 0
METRIC_NAMES = ("deletion", "insertion", "drop_in_confidence", "increase_in_confidence")


def validate(cfg: Any) -> None:
    """Every value check the schema's types cannot express, before any work: ConfigError with
    one line naming the key, the value and what was expected. (What depends on the inputs,
    such as a layer name or a class index the model must have, is checked where they are read.)
    """
    _check_run(cfg)
    check_model(cfg.model)
    check_target(cfg.target)
    check_shard(cfg.shard.count, cfg.shard.index)
    check_metrics(cfg.metrics)
    check_report(cfg.report)
    check_strategies(cfg.strategies)


def _check_run(cfg: Any) -> None:
    """The top-level keys, heatmaps, overlays, stats."""
    limits = [
        ("batch_size", cfg.batch_size >= 1, "a positive integer"),
        ("chunk_batches", cfg.chunk_batches >= 1, "a positive integer"),
        ("cam.batch_size", cfg.cam.batch_size >= 1, "a positive integer"),
        ("cam.max_channels", cfg.cam.max_channels >= 0, "an integer >= 0 (0: all channels)"),
        ("heatmaps.resolution", cfg.heatmaps.resolution in ("layer", "input"), "layer or input"),
        ("heatmaps.format", cfg.heatmaps.format in ("chunks", "files"), "chunks or files"),
        ("data.resize", cfg.data.resize in ("bilinear", "pillow"), "bilinear or pillow"),
        ("overlays.alpha", 0.0 <= cfg.overlays.alpha <= 1.0, "a value in [0, 1]"),
        ("overlays.max_side", cfg.overlays.max_side >= 8, "at least 8"),
        ("overlays.select", cfg.overlays.select in OVERLAY_MODES, "auto, all, report or none"),
        ("overlays.max_rows_all", cfg.overlays.max_rows_all >= 0, "an integer >= 0"),
        ("devices", cfg.devices in ("auto", "all"), "auto or all"),
        ("precision", cfg.precision in ("float32", "mixed_float16"), "float32 or mixed_float16"),
        ("max_error_rate", 0.0 <= cfg.max_error_rate <= 1.0, "a value in [0, 1]"),
        ("stop_grace_s", cfg.stop_grace_s >= 0, "a value >= 0 (seconds)"),
        ("log_level", cfg.log_level in ("info", "debug"), "info or debug"),
        (
            "stats.pointing_tolerance",
            cfg.stats.pointing_tolerance >= 0,
            "a value >= 0 (pixels of the original image)",
        ),
    ]
    _raise_first(limits, cfg)
    if cfg.overlays.select == "report" and cfg.overlays.enabled and not cfg.heatmaps.enabled:
        raise ConfigError(
            "overlays.select=report renders from the saved maps: it needs heatmaps.enabled=true"
        )
    if cfg.model.name != "demo" and not cfg.data.manifest:
        raise ConfigError("data.manifest is required: data.manifest=images.csv (or run the demo)")


def _raise_first(limits: list[tuple[str, bool, str]], cfg: Any, prefix: str = "") -> None:
    """ConfigError for the first (key, ok, expected) that is not ok."""
    for key, ok, expected in limits:
        if not ok:
            value = _get(cfg, key)
            shown = repr(value) if isinstance(value, str) else value
            raise ConfigError(f"{prefix}{key}={shown}; expected {expected}")


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_model(model: Any) -> None:
    """model.score, model.topk; a custom model needs model.path and no imagenet weights;
    model.input_size is [height, width]."""
    if model.score not in ("logits", "probs"):
        raise ConfigError(f"model.score={model.score!r}; expected logits or probs")
    if model.name == "custom" and _missing(model, "path"):
        raise ConfigError("model=custom needs model.path=<.keras or .h5 file>")
    if model.name in ("custom", "demo") and model.weights == "imagenet":
        raise ConfigError("model.weights=imagenet is for presets; custom models carry their own")
    if model.topk < 1:
        raise ConfigError(f"model.topk={model.topk}; expected a positive integer")
    size = None if _missing(model, "input_size") else model.input_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"model.input_size={list(size)}; expected [height, width], both positive")


def _missing(section: Any, key: str) -> bool:
    """The key is unset: ??? in a Hydra config, or None."""
    try:
        return getattr(section, key) is None
    except MissingMandatoryValue:
        return True


def check_target(target: Any) -> None:
    """target is pred, label, topk or a class index >= 0."""
    if target in TARGETS:
        return
    try:
        index = int(str(target))
    except ValueError:
        raise ConfigError(
            f"target={target!r}; expected pred, label, topk or a class index"
        ) from None
    if index < 0:
        raise ConfigError(f"target={index} is out of range; expected a class index >= 0")


def check_shard(count: int, index: int) -> None:
    """0 <= index < count."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            f"shard.index={index} with shard.count={count}; expected 0 <= index < count"
        )


def check_metrics(metrics: Any) -> None:
    """metrics.names from METRIC_NAMES, metrics.steps positive."""
    unknown = [n for n in metrics.names if n not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"metrics.names has {unknown}; expected any of {', '.join(METRIC_NAMES)}")
    if metrics.steps < 1:
        raise ConfigError(f"metrics.steps={metrics.steps}; expected a positive integer")


def check_report(report: Any) -> None:
    """report.group_by is target or label; the example counts are not negative."""
    if report.group_by not in ("target", "label"):
        raise ConfigError(f"report.group_by={report.group_by!r}; expected target or label")
    for key in ("examples", "misclassified"):
        if getattr(report, key) < 0:
            raise ConfigError(f"report.{key}={getattr(report, key)}; expected an integer >= 0")


def check_strategies(s: StrategiesConfig) -> None:
    """ConfigError for strategies values the schema's types cannot rule out."""
    limits = [
        ("min_class_n", s.min_class_n >= 3, "an integer >= 3"),
        ("max_clusters", s.max_clusters >= 1, "an integer >= 1"),
        ("grid", s.grid >= 2, "an integer >= 2"),
        ("neighbors", s.neighbors >= 1, "an integer >= 1"),
        ("examples", s.examples >= 0, "an integer >= 0"),
        ("min_cluster_n", s.min_cluster_n >= 1, "an integer >= 1"),
        ("tight", s.tight > 0, "a value > 0"),
    ]
    limits += [
        (key, 0.0 <= getattr(s, key) <= 1.0, "a value in [0, 1]")
        for key in ("weak_evidence", "min_accuracy", "fixed_share", "moving_share", "min_gap")
    ]
    for key, ok, expected in limits:
        if not ok:
            raise ConfigError(f"strategies.{key}={getattr(s, key)}; expected {expected}")
    if s.virelay and importlib.util.find_spec("h5py") is None:
        raise ConfigError(
            "strategies.virelay=true needs the optional extra: pip install 'gradcam-audit[virelay]'"
        )


def register_configs() -> None:
    """Register the schema so conf/config.yaml can extend it."""
    ConfigStore.instance().store(name="schema", node=Config)
