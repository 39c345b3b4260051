"""Throughput of the pipeline against plain inference and the Keras Grad-CAM example, one run.

    python scripts/benchmark.py [--n 256] [--batch-size 32] [--model mobilenet_v2]
                                [--reference-n 48] [--keep]

Generates --n random JPEGs (500x375, seeded) and a CSV manifest in a temp folder, then times on
one preset (weights=None, nothing downloaded) and one batch size:

  inference  the pipeline's tf.data loader + preprocess + a compiled forward pass; no CAM, no files
  pipeline   pipeline.run.run(cfg) on the real conf/: Grad-CAM, stats, heatmaps, overlays, Parquet
  reference  the Keras Grad-CAM example's per-image workflow (load, predict, make_gradcam_heatmap,
             save_and_display_gradcam), on the first --reference-n images

Each path is warmed up first and the warm-up is not timed: one batch for inference and pipeline,
one image for the reference. The warm-up batch is batch-size manifest rows naming missing files:
they go through the whole compiled step (as all-zero images), but write no files, so the timed
window holds exactly --n images of loading, compute and writing. Inference and pipeline run
--repeat times, alternating, and the round with the median ratio is reported (a 2-core shared
machine swings by a third between runs). The last line printed is one JSON object with the
numbers.

    python scripts/benchmark.py --strategies 10000 100000

instead clusters N synthetic maps of one class (MAP_SIZE x MAP_SIZE float32: Gaussian blobs at
random places and widths, a fifth near-identical maps on one corner, a little noise) with
pipeline.report.strategies.cluster_maps at the strategies config's defaults, each N in a fresh
process:
wall seconds, that process's peak RSS, the clusters and eigengap found, whether the corner group
came back whole (Jaccard of the best cluster), and a second, instrumented run's time per stage.

    python scripts/benchmark.py --soak N [--shards 2] [--kills 3] [--batch-size 32]
                                [--soak-images 3000] [--soak-chunk-batches 8] [--set KEY=VALUE]

instead soaks the whole run as a user's overnight job would see it: a manifest of N rows with
unique ids cycling over --soak-images generated 32x32 PNGs, the tiny model of --memory, each
shard as its own `python -m pipeline` process (overlays.select=none, report.enabled=false: the
run's own work at scale, not the report's), SIGKILLed --kills times in all
(GRADCAM_AUDIT_FAULT=commit:k, spread over the shards and their chunks) and resumed, then merged
by gradcam-audit-merge. Reports rows/s, each process's peak RSS and RSS over its run (sampled
from /proc), the files and bytes in the output folder, and whether every row id is in the merged
summary exactly once (exit code 1 when not).

    python scripts/benchmark.py --host [--n 3072] [--repeat 3]

instead times the host's work per image, the regime of a GPU machine where model compute is
negligible: a tiny seeded 224x224 model (four strided convs + GAP + Dense(1000), saved as .keras)
on --n JPEGs, as whole processes (wall clock from spawn to exit) and in the steady state: a plain
script (tf.data read_file + decode_jpeg + resize, batch, prefetch, predict_on_batch; steady: from
the end of its first batch) against `python -m pipeline model=custom ... report.enabled=false` with
overlays off and on (overlays.select=none|report|all when the config has that key; steady: its
run.json's timing.steady_images_per_second). Rounds alternate; medians and ratios are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

from pipeline import CONF_DIR  # first: quietens TensorFlow's C++ logging before TF loads
from pipeline.outputs import atomic_write_file, jet_lut

log = logging.getLogger("benchmark")

IMAGE_SIZE = (500, 375)  # (width, height) of the generated JPEGs
PRESETS = ("efficientnet_b0", "mobilenet_v2", "resnet50", "xception")  # pipeline.model.PRESETS
MAP_SIZE = 14  # side of the synthetic maps for --strategies: a stride-16 layer at 224 px
CORNER_SHARE = 0.2  # of the synthetic maps: the near-identical corner group to recover
STAGES = ("pooling", "PCA", "kNN search", "graph build", "eigsh", "k-means", "rest")


@dataclass
class Timing:
    """Images processed in a timed window (warm-up excluded)."""

    method: str
    images: int
    seconds: float

    @property
    def ips(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Rounds:
    """The alternating inference/pipeline rounds; the round with the median ratio stands."""

    inference: Timing
    pipeline: Timing
    end_to_end: Timing
    ratios: list[float]  # pipeline/inference images/s of every round, ascending


# ----------------------------------------------------------------------------- inputs


def make_images(folder: Path, n: int, seed: int) -> list[Path]:
    """n seeded random JPEGs: a smooth random colour field plus pixel noise, like a photo."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0.0, 10.0, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def write_manifest(path: Path, images: Sequence[Path]) -> None:
    """A CSV manifest with one `path` column, relative to the manifest's folder."""
    lines = ["path"] + [Path(os.path.relpath(p, path.parent)).as_posix() for p in images]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_maps(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps (n,size,size) float32 in [0,1] peaking at 1, corner (n,) bool): one class's maps.

    Most maps are a Gaussian blob at a random place with a random width (the object, wherever
    it is); CORNER_SHARE of them sit, almost identical, on the top-left corner (a shortcut).
    """
    rng = np.random.default_rng(seed)
    corner = np.zeros(n, bool)
    corner[rng.permutation(n)[: round(CORNER_SHARE * n)]] = True
    cy, cx = rng.uniform(0.15, 0.85, (2, n)).astype(np.float32)  # blob centres, share of side
    width = rng.uniform(0.06, 0.3, n).astype(np.float32)
    jitter = rng.normal(0.0, 0.004, (3, int(corner.sum()))).astype(np.float32)
    cy[corner], cx[corner], width[corner] = 0.05 + jitter[0], 0.05 + jitter[1], 0.07 + jitter[2]
    cells = (np.arange(size, dtype=np.float32) + 0.5) / size  # (size,) cell centres
    dy = (cells[None, :] - cy[:, None]) ** 2  # (n,size)
    dx = (cells[None, :] - cx[:, None]) ** 2
    maps = np.exp(-(dy[:, :, None] + dx[:, None, :]) / (2 * width[:, None, None] ** 2))
    maps += np.abs(rng.normal(0.0, 0.03, maps.shape)).astype(np.float32)  # (n,size,size)
    maps /= maps.max(axis=(1, 2), keepdims=True)  # normalised per map, as the CAM step does
    return maps.astype(np.float32), corner


def _quoted(value: str) -> str:
    """A path as a quoted Hydra override value."""
    if "'" in value or "\\" in value:
        raise ValueError(f"path {value!r} contains a quote or backslash; use another temp dir")
    return f"'{value}'"


def compose_config(
    model: str, manifest: Path, batch_size: int, output_dir: Path, extra: Sequence[str] = ()
):
    """The run config composed from the real conf/, as the command line would build it."""
    # here, not at the top: Hydra would add to the memory the --strategies-run child measures
    from hydra import compose, initialize_config_dir

    from pipeline.config import register_configs

    register_configs()
    overrides = [
        f"model={model}",
        "model.weights=null",
        f"data.manifest={_quoted(str(manifest))}",
        f"batch_size={batch_size}",
        f"output_dir={_quoted(str(output_dir))}",
        "progress=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


# ----------------------------------------------------------------------------- timed paths


def time_inference(cfg, paths: Sequence[Path], warmup: int) -> Timing:
    """tf.data loader + preprocess + compiled forward pass; the first `warmup` rows untimed."""
    # here, not at the top: --help, --strategies and --memory never load TensorFlow
    import tensorflow as tf
    from omegaconf import OmegaConf

    from pipeline.data import make_dataset
    from pipeline.model import load_model

    spec = replace(OmegaConf.to_object(cfg.model), path=None, class_names=None)  # a preset
    loaded = load_model(spec)
    (h, w), c = loaded.input_size, loaded.channels
    model, prep = loaded.model, loaded.preprocess

    @tf.function(input_signature=[tf.TensorSpec((None, h, w, c), tf.uint8)], reduce_retracing=True)
    def predict(images: tf.Tensor) -> tf.Tensor:  # (B,H,W,C) uint8 -> (B,N)
        return model(prep(tf.cast(images, tf.float32)), training=False)

    data = OmegaConf.to_object(cfg.data)  # the DataConfig: decode threads, prefetch, max_pixels
    dataset = make_dataset([str(p) for p in paths], None, (h, w, c), cfg.batch_size, data)
    batches = iter(dataset)
    first = next(batches)
    if int(first["row"].shape[0]) != warmup or first["ok"].numpy().any():
        raise RuntimeError(f"expected a warm-up batch of {warmup} missing files")
    predict(first["image"]).numpy()  # traces the function; not timed
    images = 0
    start = time.perf_counter()
    for batch in batches:
        if not batch["ok"].numpy().all():
            raise RuntimeError(f"load errors in the inference pass: {batch['error'].numpy()}")
        images += len(predict(batch["image"]).numpy())
    return Timing("inference", images, time.perf_counter() - start)


def _check_outputs(output_dir: Path, ok: int) -> None:
    """Every ok row has its map (read back through load_heatmaps) and what overlays it has."""
    import pandas as pd  # here, not at the top: --help and --strategies stay light

    from pipeline import load_heatmaps

    summary = pd.read_parquet(output_dir / "summary.parquet")
    maps = sum(m is not None for m in load_heatmaps(output_dir, summary))
    overlays = int(summary["overlay_path"].notna().sum())
    if maps != ok or overlays not in (0, ok):
        raise RuntimeError(f"{ok} ok rows, but {maps} maps and {overlays} overlays")


def time_pipeline(cfg, output_dir: Path, warmup: int) -> tuple[Timing, Timing]:
    """(steady state after the warm-up batch, whole run() incl. model build and tracing).

    run() builds its model and compiled step on every call, so the warm-up is its own first
    batch (missing files: computed, nothing written): build_step is wrapped to note when that
    batch's step has returned.
    """
    import pipeline.loop  # here, not at the top: --help and --strategies never load TensorFlow
    from pipeline.run import run

    marks: dict[str, float | int] = {}
    real_build_step = pipeline.loop.build_step

    def build_step(*args, **kwargs) -> Callable:
        step = real_build_step(*args, **kwargs)

        def timed_step(images, *rest):
            result = step(images, *rest)
            if "first" not in marks:
                result.explanation.cam_max.numpy()  # the batch is computed
                marks["first"] = time.perf_counter()
                marks["rows"] = int(images.shape[0])
            return result

        return timed_step

    start = time.perf_counter()
    with mock.patch.object(pipeline.loop, "build_step", build_step):
        result = run(cfg, output_dir)
    end = time.perf_counter()
    if "first" not in marks:
        raise RuntimeError("run() did not use pipeline.loop.build_step; cannot time its batches")
    if marks["rows"] != warmup:
        raise RuntimeError(f"warm-up batch has {marks['rows']} rows; expected {warmup}")
    if result.errors != warmup:
        raise RuntimeError(f"{result.errors} error rows, expected {warmup}; see {output_dir}")
    _check_outputs(output_dir, result.ok)
    steady = Timing("pipeline", result.ok, end - marks["first"])
    return steady, Timing("pipeline end-to-end", result.ok, end - start)


def time_reference(cfg, paths: Sequence[Path], out_dir: Path) -> Timing:
    """The Keras Grad-CAM example, per image, on its own model; the first image untimed."""
    import keras  # here, not at the top: --help and --strategies never load TensorFlow

    from pipeline.model import PRESETS as MODEL_PRESETS
    from pipeline.model import resolve_preprocess

    constructor, side = MODEL_PRESETS[cfg.model.name]
    img_size = (side, side)
    preprocess_input = resolve_preprocess(cfg.model.preprocess)
    last_conv_layer_name = cfg.model.layer  # "out_relu" for mobilenet_v2
    # a separate instance: the example removes the last layer's softmax in place
    model = getattr(keras.applications, constructor)(weights=None, input_shape=(side, side, 3))
    model.layers[-1].activation = None
    jet_colors = jet_lut().astype(np.float32) / 255.0  # = mpl.colormaps["jet"](np.arange(256))

    def one_image(img_path, cam_path):  # the example's steps for one image
        img_array = preprocess_input(get_img_array(img_path, size=img_size))
        preds = model.predict(img_array, verbose=0)  # the example prints decode_predictions(preds)
        heatmap = make_gradcam_heatmap(img_array, model, last_conv_layer_name)
        save_and_display_gradcam(img_path, heatmap, jet_colors, cam_path)
        return preds

    out_dir.mkdir(parents=True, exist_ok=True)
    one_image(paths[0], out_dir / "warmup.jpg")  # not timed
    start = time.perf_counter()
    for i, path in enumerate(paths):
        one_image(path, out_dir / f"cam_{i:05d}.jpg")
    return Timing("reference", len(paths), time.perf_counter() - start)


# --- from here on, the example's code (keras.io/examples/vision/grad_cam); keras and tensorflow
# are imported in each function (here, not at the top: --help and --strategies never load them)


def get_img_array(img_path, size):
    import keras

    img = keras.utils.load_img(img_path, target_size=size)
    array = keras.utils.img_to_array(img)
    array = np.expand_dims(array, axis=0)
    return array


def make_gradcam_heatmap(img_array, model, last_conv_layer_name, pred_index=None):
    import keras
    import tensorflow as tf

    grad_model = keras.models.Model(
        model.inputs, [model.get_layer(last_conv_layer_name).output, model.output]
    )
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    last_conv_layer_output = last_conv_layer_output[0]
    heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def save_and_display_gradcam(img_path, heatmap, jet_colors, cam_path="cam.jpg", alpha=0.4):
    # jet_colors: the example takes them from matplotlib inside this function
    import keras

    img = keras.utils.load_img(img_path)
    img = keras.utils.img_to_array(img)
    heatmap = np.uint8(255 * heatmap)
    jet_heatmap = jet_colors[heatmap]
    jet_heatmap = keras.utils.array_to_img(jet_heatmap)
    jet_heatmap = jet_heatmap.resize((img.shape[1], img.shape[0]))
    jet_heatmap = keras.utils.img_to_array(jet_heatmap)
    superimposed_img = jet_heatmap * alpha + img
    superimposed_img = keras.utils.array_to_img(superimposed_img)
    superimposed_img.save(cam_path)
    # (the example then displays the image; nothing to display here)


# --- end of the example's code


# ----------------------------------------------------------------------------- strategies


@contextlib.contextmanager
def stage_clocks() -> Iterator[dict[str, float]]:
    """Time the stages of pipeline.report.strategies.cluster_maps while it runs unchanged.

    The module's own functions and the sklearn/scipy calls it makes are wrapped in place, so the
    stages are exactly what cluster_maps does; yields the clocks: seconds added up by name.
    """
    # here, not at the top: scikit-learn and scipy (~170 MB) load only for --strategies
    import sklearn.neighbors

    from pipeline.report import strategies

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[name] = clock.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    class KDTree(sklearn.neighbors.KDTree):  # building and querying it: the neighbour search
        def __init__(self, *args, **kwargs):
            timed("KDTree", super().__init__)(*args, **kwargs)

        def query(self, *args, **kwargs):
            return timed("KDTree", super().query)(*args, **kwargs)

    s, nn = strategies, strategies.NearestNeighbors
    wrapped = [
        (s, "grid_features"),
        (s, "knn_graph"),
        (s, "spectrum"),
        (s, "eigsh"),
        (s.PCA, "fit_transform"),
        (nn, "fit"),
        (nn, "kneighbors"),
        (s.KMeans, "fit_predict"),
    ]
    clock: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        for owner, attr in wrapped:
            name = attr if owner is s else f"{owner.__name__}.{attr}"
            stack.enter_context(mock.patch.object(owner, attr, timed(name, getattr(owner, attr))))
        for owner in (sklearn.neighbors, s):  # knn_graph may import it either way
            if hasattr(owner, "KDTree"):
                stack.enter_context(mock.patch.object(owner, "KDTree", KDTree))
        yield clock


def stage_seconds(clock: dict[str, float], total: float) -> dict[str, float]:
    """The clocks of stage_clocks as STAGES; 'rest' is choose_k, join_alike and describe."""
    names = ("NearestNeighbors.fit", "NearestNeighbors.kneighbors", "KDTree")
    knn = sum(clock.get(name, 0.0) for name in names)
    pca = clock.get("PCA.fit_transform", 0.0)
    eig = clock.get("eigsh", 0.0)
    build = clock.get("knn_graph", 0.0) - pca - knn + clock.get("spectrum", 0.0) - eig
    stages = [clock.get("grid_features", 0.0), pca, knn, build, eig]
    stages.append(clock.get("KMeans.fit_predict", 0.0))
    return dict(zip(STAGES, [*stages, total - sum(stages)]))


def _memory_mb(field: str, pid: int | str = "self") -> float:
    """A field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: now) in MB; this process's
    ru_maxrss where there is no /proc; 0 for a process that has just ended."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            text = status.read_text()
        except OSError:  # the process ended between the check and the read
            return 0.0
        for line in text.splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    if pid != "self":  # another process without the field (ended: a zombie has none)
        return 0.0
    import resource  # here, not at the top: there is no resource module on Windows

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def strategies_run(spec: str) -> int:
    """Child process: cluster the maps of one .npy file; print one JSON line of numbers."""
    # here, not at the top: scikit-learn and scipy (~170 MB) load only for --strategies
    from pipeline.report import strategies

    job = json.loads(spec)
    maps = np.load(job["maps"])  # (n,h,w) float32: one class's maps, as the pipeline loads them
    before = _memory_mb("VmRSS")
    with stage_clocks() if job["staged"] else contextlib.nullcontext({}) as clock:
        start = time.perf_counter()
        found = strategies.cluster_maps(
            maps, job["max_clusters"], job["neighbors"], job["grid"], job["seed"]
        )
        seconds = time.perf_counter() - start
    np.save(job["labels"], found.labels)
    result = {
        "seconds": seconds,
        "peak_rss_mb": _memory_mb("VmHWM"),
        "rss_before_mb": before,
        "n_clusters": found.n_clusters,
        "eigengap": found.eigengap,
        "stages": stage_seconds(clock, seconds) if job["staged"] else None,
        "source": hashlib.sha256(Path(strategies.__file__).read_bytes()).hexdigest()[:12],
    }
    print(json.dumps(result))
    return 0


def _strategies_child(job: dict) -> dict:
    """strategies_run(job) in a fresh Python process: its numbers."""
    command = [sys.executable, __file__, "--strategies-run", json.dumps(job)]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"clustering {job['maps']} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_jaccard(labels: np.ndarray, group: np.ndarray) -> float:
    """Jaccard index of `group` (n,) bool with the cluster that matches it best."""
    return max(
        float((group & (labels == c)).sum() / (group | (labels == c)).sum())
        for c in np.unique(labels)
    )


def strategies_benchmark(sizes: Sequence[int], seed: int, keep: bool) -> int:
    """cluster_maps on one class of N synthetic maps, each N in a fresh process, timed twice:
    plain (seconds, peak RSS, result) and instrumented (seconds per stage)."""
    # here, not at the top: Hydra would add to the memory the --strategies-run child measures
    from pipeline.config import StrategiesConfig

    defaults = StrategiesConfig()
    settings = {
        "max_clusters": defaults.max_clusters,
        "neighbors": defaults.neighbors,
        "grid": defaults.grid,
        "seed": seed,
    }
    work = Path(tempfile.mkdtemp(prefix="gradcam-strategies-"))
    results = {}
    try:
        for n in sizes:
            maps, corner = make_maps(n, MAP_SIZE, seed)
            path = work / f"maps_{n}.npy"
            np.save(path, maps)
            del maps
            runs = {}
            for staged in (False, True):
                job = {"maps": str(path), "labels": str(work / f"labels_{n}_{staged}.npy")}
                log.info("cluster_maps on %d maps%s", n, " (per stage)" if staged else "")
                runs[staged] = _strategies_child({**job, **settings, "staged": staged})
                runs[staged]["labels"] = np.load(job["labels"])
            plain, staged_run = runs[False], runs[True]
            results[n] = {
                **{k: v for k, v in plain.items() if k not in ("labels", "stages")},
                "corner_jaccard": best_jaccard(plain["labels"], corner),
                "same_labels_twice": bool(np.array_equal(plain["labels"], staged_run["labels"])),
                "same_source_twice": plain["source"] == staged_run["source"],
                "staged_seconds": staged_run["seconds"],
                "stages": staged_run["stages"],
            }
    finally:
        clean_up(work, keep)
    print_strategies(results, settings)
    return 0


def print_strategies(results: dict[int, dict], settings: dict) -> None:
    """The --strategies tables and the JSON line."""
    print(
        f"\ncluster_maps(maps, {settings['max_clusters']}, {settings['neighbors']}, "
        f"{settings['grid']}, seed={settings['seed']}) on {MAP_SIZE}x{MAP_SIZE} float32 maps, "
        f"{CORNER_SHARE:.0%} on one corner; one fresh process per run, {os.cpu_count()} CPU(s)"
    )
    print("      maps  seconds  peak RSS MB  (before MB)  clusters  eigengap  corner Jaccard")
    for n, r in results.items():
        print(
            f"{n:>10d}  {r['seconds']:>7.1f}  {r['peak_rss_mb']:>11.0f}"
            f"  {r['rss_before_mb']:>11.0f}  {r['n_clusters']:>8d}  {r['eigengap']:>8.1e}"
            f"  {r['corner_jaccard']:>14.3f}"
        )
    same = all(r["same_labels_twice"] for r in results.values())
    edited = not all(r["same_source_twice"] for r in results.values())
    print(
        "\nper stage, seconds (a second, instrumented run; its labels equal the first's: "
        f"{same}{'; strategies.py was edited in between' if edited else ''})"
    )
    print(f"{'maps':>10}  " + "  ".join(f"{s:>11}" for s in (*STAGES, "total")))
    for n, r in results.items():
        cells = [*r["stages"].values(), r["staged_seconds"]]
        print(f"{n:>10d}  " + "  ".join(f"{v:>11.2f}" for v in cells))
    summary = {
        "strategies": {str(n): _rounded(r) for n, r in results.items()},
        "settings": settings,
        "map_size": MAP_SIZE,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    print(json.dumps(summary))


def _rounded(value):
    """Floats in nested dicts rounded to 4 significant digits, for the JSON line."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return float(f"{value:.4g}") if isinstance(value, float) else value


# ----------------------------------------------------------------------------- host work

HOST_N = 3072  # --host's default --n
HOST_SIDE = 224  # the tiny model's input side
PLAIN_SCRIPT = '''\
"""Plain Keras inference over a file list: tf.data decode + resize + predict, nothing else."""
import json
import sys
import time

import keras
import tensorflow as tf

files, model_path, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(files, encoding="utf-8") as f:
    paths = f.read().splitlines()
model = keras.saving.load_model(model_path)
side = model.input_shape[1]


def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    return tf.image.resize(image, (side, side)) / 255.0  # model.preprocess=unit


ds = tf.data.Dataset.from_tensor_slices(paths)
ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
# as in the audit: without tf.data's autotuning model thread, whose wait for its next round can
# hold up the iterator's teardown for seconds (that would flatter the audit's ratios)
options = tf.data.Options()
options.autotune.enabled = False
ds = ds.with_options(options)
images, first, first_n = 0, None, 0
for batch in ds:
    images += len(model.predict_on_batch(batch))
    end = time.perf_counter()
    if first is None:
        first, first_n = end, images
steady = (images - first_n) / (end - first) if first and end > first else None
print(json.dumps({"images": images, "steady_images_per_second": steady}))
'''


@dataclass
class HostRun:
    """One whole process: wall seconds from spawn to exit, CPU seconds, steady images/s."""

    seconds: float
    cpu_seconds: float  # user + system, all its threads: steadier than wall on a busy machine
    steady_ips: float | None
    steal_seconds: float = 0.0  # CPU time the hypervisor gave elsewhere meanwhile (all CPUs)


HOST_MODELS = {  # --host-model: ((filters, stride) of each conv, description); both end on 14x14
    "tiny": ([(16, 2), (32, 2), (64, 2), (128, 2)], "four strided convs + GAP + Dense(1000)"),
    "micro": ([(8, 8), (16, 2)], "two convs, strides 8 and 2, + GAP + Dense(1000)"),  # ~no compute
}


def host_model(path: Path, seed: int, kind: str = "tiny") -> Path:
    """A seeded 224x224 classifier: strided convs (HOST_MODELS[kind]), global average
    pooling, Dense(1000)."""
    import keras  # here, not at the top: --help and --strategies never load TensorFlow

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((HOST_SIDE, HOST_SIDE, 3))
    x = inputs
    for i, (filters, stride) in enumerate(HOST_MODELS[kind][0]):
        x = keras.layers.Conv2D(
            filters, 3, strides=stride, padding="same", activation="relu", name=f"conv{i + 1}"
        )(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(1000, activation="softmax")(x)).save(path)
    return path


def child_env() -> dict[str, str]:
    """This environment, with the `pipeline` this script imported first on PYTHONPATH."""
    import pipeline  # already loaded at the top; here for its location

    root = str(Path(pipeline.__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, rest] if rest else [root])}


def host_variants() -> tuple[dict[str, list[str]], str]:
    """The audit variants ({name: overrides}) and a note: overlays.select when the config has
    it (probed with --cfg job), else overlays.enabled=false and the defaults."""
    probe = [sys.executable, "-m", "pipeline", "--cfg", "job", "overlays.select=none"]
    proc = subprocess.run(probe, capture_output=True, text=True, env=child_env())
    if proc.returncode == 0:
        names = [f"overlays.select={v}" for v in ("none", "report", "all")]
        return {n: [n] for n in names}, "the config has overlays.select: none, report, all"
    variants = {"overlays.enabled=false": ["overlays.enabled=false"], "defaults": []}
    note = "no overlays.select in the config: overlays.enabled=false and the defaults instead"
    return variants, note


def steal_seconds() -> float:
    """The machine's stolen CPU seconds so far (Linux /proc/stat; 0 elsewhere): time a virtual
    machine's CPUs were runnable but given to another guest. It slows wall clocks, not CPU."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def timed_process(command: Sequence[str]) -> tuple[float, float, float, str]:
    """(wall seconds from spawn to exit, CPU seconds, stolen seconds, stdout) of a process that
    must exit 0."""
    import resource  # here, not at the top: there is no resource module on Windows

    before, stolen = resource.getrusage(resource.RUSAGE_CHILDREN), steal_seconds()
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env())
    seconds = time.perf_counter() - start
    after, stolen = resource.getrusage(resource.RUSAGE_CHILDREN), steal_seconds() - stolen
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:3]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, stolen, proc.stdout


def run_plain(script: Path, files: Path, model: Path, batch_size: int, n: int) -> HostRun:
    """The plain script as a whole process."""
    command = [sys.executable, str(script), str(files), str(model), str(batch_size)]
    seconds, cpu, stolen, stdout = timed_process(command)
    result = json.loads(stdout.strip().splitlines()[-1])
    if result["images"] != n:
        raise RuntimeError(f"the plain script predicted {result['images']} images, not {n}")
    return HostRun(seconds, cpu, result["steady_images_per_second"], stolen)


def run_audit(model: Path, manifest: Path, out: Path, n: int, overrides: Sequence[str]) -> HostRun:
    """`python -m pipeline` as a whole process; steady images/s from its run.json."""
    command = [
        *(sys.executable, "-m", "pipeline", "model=custom", f"model.path={_quoted(str(model))}"),
        *("model.preprocess=unit", f"data.manifest={_quoted(str(manifest))}"),
        *(f"output_dir={_quoted(str(out))}", "progress=false", "report.enabled=false"),
        *overrides,
    ]
    seconds, cpu, stolen, _ = timed_process(command)
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    if record["counts"]["ok"] != n:
        raise RuntimeError(f"the audit read {record['counts']} rows, expected {n} ok")
    return HostRun(seconds, cpu, record["timing"]["steady_images_per_second"], stolen)


def host_benchmark(args: argparse.Namespace) -> int:
    """The plain script and the audit variants as whole processes, in alternating rounds."""
    load_before = os.getloadavg()[0]
    variants, note = host_variants()
    log.info("%s", note)
    work = Path(tempfile.mkdtemp(prefix="gradcam-host-"))
    try:
        log.info("generating %d JPEGs (%dx%d) in %s", args.n, *IMAGE_SIZE, work)
        images = make_images(work / "images", args.n, args.seed)
        write_manifest(work / "manifest.csv", images)
        (work / "files.txt").write_text("\n".join(str(p) for p in images), encoding="utf-8")
        (work / "plain.py").write_text(PLAIN_SCRIPT, encoding="utf-8")
        model = host_model(work / f"{args.host_model}.keras", args.seed, args.host_model)
        probe = [file_create_ms(work / "probe-start")]
        runs = host_rounds(args, work, model, variants)
        probe.append(file_create_ms(work / "probe-end"))
    finally:
        clean_up(work, args.keep)
    summary = host_summary(args, runs, note, load_before)
    summary["file_create_ms"] = probe  # before the rounds, after them
    print_host(summary)
    print(json.dumps(summary))
    return 0


def file_create_ms(folder: Path, n: int = 512, size: int = 40_000) -> float:
    """CPU ms to create one file of `size` bytes through the overlay writer's own file handling
    (atomic_write_file), over n files in a new folder, removed after. On ext4 it depends on
    the disk's history: 0.1 ms on fresh inodes, 0.5-1 ms while just-freed ones are reused."""
    data = os.urandom(size)
    start = time.process_time()
    for i in range(n):
        atomic_write_file(folder / f"{i}.jpg", lambda file: file.write(data))
    cpu = time.process_time() - start
    shutil.rmtree(folder)
    return round(cpu / n * 1000, 3)


def host_rounds(
    args: argparse.Namespace, work: Path, model: Path, variants: dict[str, list[str]]
) -> dict[str, list[HostRun]]:
    """--repeat rounds of the plain script then every variant: {name: one HostRun a round}.
    Every audit's output folder is kept until the end: removing one's thousands of files just
    before the next run would make that run reuse just-freed inodes, which on ext4 costs
    0.5-1 ms of kernel CPU per file created (file_create_ms), a cost of this benchmark's own
    making and not of the run measured."""
    batch = [f"batch_size={args.batch_size}", *args.set]
    runs: dict[str, list[HostRun]] = {"plain": [], **{name: [] for name in variants}}
    for rep in range(args.repeat):
        log.info("round %d/%d: plain script, %d images", rep + 1, args.repeat, args.n)
        plain = run_plain(work / "plain.py", work / "files.txt", model, args.batch_size, args.n)
        runs["plain"].append(plain)
        for name, overrides in variants.items():
            log.info("round %d/%d: audit %s", rep + 1, args.repeat, name)
            out = work / f"out_{name}_{rep}"
            runs[name].append(
                run_audit(model, work / "manifest.csv", out, args.n, [*batch, *overrides])
            )
    return runs


def host_summary(
    args: argparse.Namespace, runs: dict[str, list[HostRun]], note: str, load_before: float
) -> dict:
    """--host's JSON line: medians over the rounds; ratios to the plain script of the same round."""
    plain = runs["plain"]
    audits = {name: r for name, r in runs.items() if name != "plain"}
    return {
        "host_ratio_steady": {
            name: round(_median([a.steady_ips / p.steady_ips for a, p in zip(r, plain)]), 3)
            for name, r in audits.items()
        },
        "host_ratio_process": {
            name: round(_median([p.seconds / a.seconds for a, p in zip(r, plain)]), 3)
            for name, r in audits.items()
        },
        "host_ratio_cpu": {
            name: round(_median([p.cpu_seconds / a.cpu_seconds for a, p in zip(r, plain)]), 3)
            for name, r in audits.items()
        },
        "seconds": {name: round(_median([x.seconds for x in r]), 2) for name, r in runs.items()},
        "cpu_seconds": {
            name: round(_median([x.cpu_seconds for x in r]), 2) for name, r in runs.items()
        },
        "steady_ips": {
            name: round(_median([x.steady_ips for x in r]), 1) for name, r in runs.items()
        },
        "rounds_seconds": {name: [round(x.seconds, 2) for x in r] for name, r in runs.items()},
        "rounds_steady_ips": {
            name: [round(x.steady_ips, 1) for x in r] for name, r in runs.items()
        },
        "rounds_steal_seconds": {
            name: [round(x.steal_seconds, 2) for x in r] for name, r in runs.items()
        },
        "variants": note,
        "n": args.n,
        "host_model": args.host_model,
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "overrides": args.set,
        "image_size": list(IMAGE_SIZE),
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # start, end
        "python": platform.python_version(),
    }


def _median(values: Sequence[float]) -> float:
    return float(np.median(values))


def print_host(summary: dict) -> None:
    """--host's table: per variant, whole-process and CPU seconds, steady images/s (medians)."""
    n, batch = summary["n"], summary["batch_size"]
    print(
        f"\n{n} JPEGs {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, {summary['host_model']} "
        f"{HOST_SIDE}x{HOST_SIDE} model ({HOST_MODELS[summary['host_model']][1]}), batch "
        f"{batch}, {summary['cpus']} CPU(s); medians of {summary['repeat']} rounds\n"
        f"{summary['variants']}"
    )
    names = list(summary["seconds"])
    width = max(len(name) for name in names)
    heads = ("process s", "vs plain", "CPU s", "vs plain", "steady img/s", "vs plain")
    print(f"{'run':<{width}}  {heads[0]:>9}  {heads[1]:>8}  {heads[2]:>7}  {heads[3]:>8}", end="")
    print(f"  {heads[4]:>12}  {heads[5]:>8}")
    for name in names:
        ratios = [summary[f"host_ratio_{k}"].get(name, 1.0) for k in ("process", "cpu", "steady")]
        print(
            f"{name:<{width}}  {summary['seconds'][name]:>9.2f}  {ratios[0]:>8.3f}"
            f"  {summary['cpu_seconds'][name]:>7.1f}  {ratios[1]:>8.3f}"
            f"  {summary['steady_ips'][name]:>12.1f}  {ratios[2]:>8.3f}"
        )
    print("vs plain: process and CPU = plain seconds / run's; steady = run's img/s / plain's")
    if "file_create_ms" in summary:
        before, after = summary["file_create_ms"]
        print(f"CPU ms to create one file in the work folder: {before} before, {after} after")
    steal = summary["rounds_steal_seconds"]
    if any(s > 0 for rounds in steal.values() for s in rounds):
        print("stolen CPU s per round (a virtual machine's CPUs given to other guests; it slows")
        print("wall clocks, not CPU s): " + "; ".join(f"{k} {v}" for k, v in steal.items()))


# ----------------------------------------------------------------------------- report


def methods_benchmark(args: argparse.Namespace) -> int:
    """The full pipeline once per CAM method, on the same images; ratios to plain Grad-CAM."""
    from pipeline.cam import METHODS  # here, not at the top: --help never loads TensorFlow

    methods = args.methods or sorted(METHODS, key=lambda m: (m != "gradcam", m))
    if "gradcam" not in methods:
        methods = ["gradcam", *methods]
    work = Path(tempfile.mkdtemp(prefix="gradcam-methods-"))
    try:
        images = make_images(work / "images", args.n, args.seed)
        warmup = [work / "warmup" / f"missing_{i:05d}.jpg" for i in range(args.batch_size)]
        manifest = work / "manifest.csv"
        write_manifest(manifest, warmup + images)
        timings = {}
        for method in methods:
            out = work / f"out_{method}"
            cfg = compose_config(
                args.model, manifest, args.batch_size, out, [f"cam={method}", *args.set]
            )
            log.info("pipeline with cam=%s: %d + %d warm-up images", method, args.n, len(warmup))
            timings[method], _ = time_pipeline(cfg, out, len(warmup))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = timings["gradcam"].ips
    print(f"\nmodel={args.model} (weights=None) batch_size={args.batch_size}, {args.n} images")
    print("method        images/s  vs gradcam")
    for method, timing in timings.items():
        print(f"{method:<12} {timing.ips:>9.2f}  {timing.ips / base:>9.3f}")
    print(
        json.dumps(
            {
                "methods": {
                    m: {"ips": round(t.ips, 3), "vs_gradcam": round(t.ips / base, 3)}
                    for m, t in timings.items()
                },
                "n": args.n,
                "batch_size": args.batch_size,
                "model": args.model,
            }
        )
    )
    return 0


def memory_benchmark(sizes: Sequence[int], seed: int, keep: bool) -> int:
    """Peak RSS of a whole `gradcam-audit` run (its own process) for each manifest size."""
    work = Path(tempfile.mkdtemp(prefix="gradcam-mem-"))
    try:
        model = tiny_model(work / "m.keras", seed)
        paths = tiny_pngs(work / "images", max(sizes), seed)
        peaks = {}
        for n in sizes:
            manifest = work / f"m{n}.csv"
            write_manifest(manifest, paths[:n])
            start = time.perf_counter()
            peaks[n] = run_peak_rss_mb(model, manifest, work / f"out{n}", n)
            log.info(
                "%d images: peak RSS %.0f MB (%.0f s)", n, peaks[n], time.perf_counter() - start
            )
    finally:
        clean_up(work, keep)
    print_memory(peaks, sizes)
    return 0


def tiny_model(path: Path, seed: int) -> Path:
    """A seeded two-conv 32x32 classifier saved at `path`, for the memory runs."""
    import keras  # here, not at the top: --help and --strategies never load TensorFlow

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x)).save(path)
    return path


def tiny_pngs(folder: Path, n: int, seed: int) -> list[Path]:
    """n seeded random 32x32 PNGs in `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    log.info("generating %d tiny PNGs in %s", n, folder)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_peak_rss_mb(model: Path, manifest: Path, output_dir: Path, n: int) -> float:
    """Peak RSS in MB of one `python -m pipeline` run on `manifest`, measured from its parent."""
    args = [
        sys.executable,
        "-m",
        "pipeline",
        "model=custom",
        f"model.path={_quoted(str(model))}",
        "model.preprocess=unit",
        f"data.manifest={_quoted(str(manifest))}",
        f"output_dir={_quoted(str(output_dir))}",
        "progress=false",
    ]
    code = (
        "import resource, subprocess, sys; "
        f"p = subprocess.run({args!r}, capture_output=True); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    status, peak_kb = out.stdout.split()
    if status != "0":
        raise RuntimeError(f"run on {n} images exited {status}")
    return int(peak_kb) / 1024


def print_memory(peaks: dict[int, float], sizes: Sequence[int]) -> None:
    """The --memory table and the JSON line."""
    small, large = sizes
    print("\nimages  peak RSS (MB)")
    for n in sizes:
        print(f"{n:>6d}  {peaks[n]:>12.0f}")
    ratio = round(peaks[large] / peaks[small], 3)
    print(
        json.dumps(
            {
                "peak_rss_mb": {str(n): round(v, 1) for n, v in peaks.items()},
                "rss_ratio": ratio,
                "sizes": list(sizes),
            }
        )
    )


# ----------------------------------------------------------------------------- soak

SOAK_IMAGES = 3000  # distinct tiny PNGs the soak's manifest cycles over
SOAK_SETTINGS = ("progress=false", "report.enabled=false", "overlays.select=none")


@dataclass
class SoakProcess:
    """One `gradcam-audit` process of the soak: how it ended, its wall time and memory."""

    shard: int
    fault: str | None  # GRADCAM_AUDIT_FAULT it ran with (a planned kill), None: to the end
    code: int
    seconds: float
    peak_rss_mb: float  # VmHWM, sampled while it ran
    rss_mb: list[tuple[float, float]]  # (seconds since its start, VmRSS MB), ~10 samples


def soak_benchmark(args: argparse.Namespace) -> int:
    """N manifest rows over a few thousand tiny PNGs, shard by shard, killed and resumed along
    the way, then merged; rows/s, peak RSS over time, files, bytes, every row present once."""
    work = Path(tempfile.mkdtemp(prefix="gradcam-soak-"))
    try:
        model = tiny_model(work / "m.keras", args.seed)
        images = tiny_pngs(work / "images", min(args.soak_images, args.soak), args.seed)
        manifest = soak_manifest(work / "manifest.csv", images, args.soak)
        out, start = work / "out", time.perf_counter()
        processes = []
        for shard in range(args.shards):
            processes += soak_shard(args, model, manifest, out, shard)
        merge_seconds = soak_merge(out) if args.shards > 1 else 0.0
        seconds = time.perf_counter() - start
        result = soak_summary(args, out, processes, seconds, merge_seconds)
    finally:
        clean_up(work, args.keep)
    print_soak(result, processes)
    return 0 if result["every_row_once"] else 1


def soak_manifest(path: Path, images: Sequence[Path], n: int) -> Path:
    """n rows with unique ids (r0000000, ...) cycling over the images."""
    names = [Path(os.path.relpath(p, path.parent)).as_posix() for p in images]
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,path\n")
        f.writelines(f"r{i:07d},{names[i % len(names)]}\n" for i in range(n))
    return path


def soak_overrides(args: argparse.Namespace, model: Path, manifest: Path, out: Path) -> list[str]:
    """The audit's command-line overrides for one shard (shard.index appended by the caller)."""
    return [
        *("model=custom", f"model.path={_quoted(str(model))}", "model.preprocess=unit"),
        *(f"data.manifest={_quoted(str(manifest))}", f"output_dir={_quoted(str(out))}"),
        *(f"batch_size={args.batch_size}", f"chunk_batches={args.soak_chunk_batches}"),
        *(f"shard.count={args.shards}", *SOAK_SETTINGS, *args.set),
    ]


def soak_kills(args: argparse.Namespace, shard: int) -> list[int]:
    """Where this shard's planned kills land: the k-th chunk commit of each killed process
    (GRADCAM_AUDIT_FAULT=commit:k), spreading --kills evenly over the shards and their chunks."""
    from pipeline.shards import shard_rows  # here: light (no TensorFlow), like the top imports

    kills = args.kills // args.shards + (shard < args.kills % args.shards)
    block = args.batch_size * args.soak_chunk_batches
    chunks = -(-len(shard_rows(args.soak, args.shards, shard, block=block)) // block)
    left, plan = chunks, []
    for k in range(kills, 0, -1):
        at = max(1, left // (k + 1))  # commits by this process; the at-th one is killed
        plan.append(at)
        left -= at - 1  # the killed commit's chunk is lost and redone
    return plan


def soak_shard(
    args: argparse.Namespace, model: Path, manifest: Path, out: Path, shard: int
) -> list[SoakProcess]:
    """Run one shard: killed at its planned commits, resumed, then run to the end."""
    command = [sys.executable, "-m", "pipeline", *soak_overrides(args, model, manifest, out)]
    command.append(f"shard.index={shard}")
    runs = []
    for fault in [f"commit:{at}" for at in soak_kills(args, shard)] + [None]:
        run = soak_process(command, fault, out.parent / f"shard{shard}.log", shard)
        log.info(
            "shard %d %s: exit %d after %.1f s, peak RSS %.0f MB",
            *(shard, f"killed at {fault}" if fault else "to the end", run.code, run.seconds),
            run.peak_rss_mb,
        )
        expected = -9 if fault else 0
        if run.code != expected:
            raise RuntimeError(f"shard {shard} ({fault}) exited {run.code}, expected {expected}")
        runs.append(run)
    return runs


def soak_process(
    command: Sequence[str], fault: str | None, log_path: Path, shard: int
) -> SoakProcess:
    """One process, its VmRSS/VmHWM sampled every 0.2 s from /proc while it runs."""
    env = {k: v for k, v in child_env().items() if k != "GRADCAM_AUDIT_FAULT"}
    env.update({"GRADCAM_AUDIT_FAULT": fault} if fault else {})
    start, samples, peak = time.perf_counter(), [], 0.0
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            rss, hwm = _memory_mb("VmRSS", proc.pid), _memory_mb("VmHWM", proc.pid)
            peak = max(peak, hwm)
            samples.append((round(time.perf_counter() - start, 1), round(rss, 1)))
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    kept = samples[:: max(1, len(samples) // 10)]
    return SoakProcess(shard, fault, proc.returncode, seconds, peak, kept)


def soak_merge(out: Path) -> float:
    """gradcam-audit-merge on the shared folder, as its own process; its wall seconds."""
    code = "from pipeline.cli.merge import main; main()"
    start = time.perf_counter()
    command = [sys.executable, "-c", code, str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"merge exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def soak_accounting(out: Path, n: int) -> dict:
    """Every manifest row's id in the merged summary exactly once (and nothing else)."""
    import pyarrow.parquet as pq  # here, not at the top: only the soak reads Parquet

    ids = pq.read_table(out / "summary.parquet", columns=["id"]).column("id").to_numpy(False)
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    expected = np.array([f"r{i:07d}" for i in range(n)])
    missing = int(len(np.setdiff1d(expected, unique, assume_unique=True)))
    extra = int(len(np.setdiff1d(unique, expected, assume_unique=True)))
    duplicated = int((counts > 1).sum())
    once = len(ids) == n and missing == 0 and extra == 0 and duplicated == 0
    return {
        "rows_expected": n,
        "rows_in_summary": len(ids),
        "missing": missing,
        "duplicated": duplicated,
        "unexpected": extra,
        "every_row_once": once,
    }


def soak_summary(
    args: argparse.Namespace,
    out: Path,
    processes: Sequence[SoakProcess],
    seconds: float,
    merge_seconds: float,
) -> dict:
    """The soak's numbers, one dict (the JSON line)."""
    sizes = [p.stat().st_size for p in out.rglob("*") if p.is_file()]
    audit_seconds = sum(p.seconds for p in processes)
    return {
        "rows": args.soak,
        "images": min(args.soak_images, args.soak),
        "shards": args.shards,
        "kills": sum(p.fault is not None for p in processes),
        "processes": len(processes),
        "wall_seconds": round(seconds, 1),
        "audit_seconds": round(audit_seconds, 1),
        "merge_seconds": round(merge_seconds, 1),
        "rows_per_second": round(args.soak / seconds, 1),
        "peak_rss_mb": round(max(p.peak_rss_mb for p in processes), 1),
        "files": len(sizes),
        "bytes": int(sum(sizes)),
        **soak_accounting(out, args.soak),
    }


def print_soak(result: dict, processes: Sequence[SoakProcess]) -> None:
    """Each process's end, time and RSS over time; then the JSON line."""
    print("\nshard  ended             seconds  peak RSS MB  RSS MB over the run (s: MB)")
    for p in processes:
        ended = f"killed {p.fault}" if p.fault else f"exit {p.code}"
        over = ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in p.rss_mb)
        print(f"{p.shard:>5d}  {ended:<16}  {p.seconds:>7.1f}  {p.peak_rss_mb:>11.0f}  {over}")
    print(json.dumps(result))


def clean_up(work: Path, keep: bool) -> None:
    """Remove the temp folder, unless --keep."""
    if keep:
        log.info("kept %s", work)
    else:
        shutil.rmtree(work, ignore_errors=True)


def table(rows: Sequence[tuple[str, Timing]]) -> str:
    """A fixed-width table: method, images, seconds, images/s."""
    width = max(len(label) for label, _ in rows)
    lines = [f"{'method':<{width}}  {'images':>6}  {'seconds':>8}  {'images/s':>8}"]
    for label, t in rows:
        lines.append(f"{label:<{width}}  {t.images:>6d}  {t.seconds:>8.2f}  {t.ips:>8.2f}")
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Time inference, the full pipeline and the Keras Grad-CAM example.",
    )
    parser.add_argument(
        "--n", type=int, default=None, help=f"images to generate and time (256; --host: {HOST_N})"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", choices=PRESETS, default="mobilenet_v2", help="preset")
    parser.add_argument(
        "--reference-n", type=int, default=48, help="images for the slow reference (0: skip it)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for images and weights")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="rounds of inference + pipeline; the median round is reported (noisy machines)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and outputs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra pipeline override, e.g. --set jit_compile=true (repeatable)",
    )
    add_mode_options(parser)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = HOST_N if args.host else 256
    if args.n < 1 or args.batch_size < 1 or args.reference_n < 0 or args.repeat < 1:
        parser.error("--n, --batch-size and --repeat must be >= 1, --reference-n >= 0")
    if args.soak is not None and (args.soak < 1 or args.shards < 1 or args.kills < 0):
        parser.error("--soak N needs N >= 1, --shards >= 1 and --kills >= 0")
    if args.strategies and min(args.strategies) < 3:
        parser.error("--strategies N needs N >= 3 maps")
    return args


def add_mode_options(parser: argparse.ArgumentParser) -> None:
    """The options that run another benchmark instead of the throughput one."""
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead: peak RSS of whole runs on --memory-sizes tiny images (tiny model)",
    )
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[1000, 20000])
    parser.add_argument(
        "--strategies",
        type=int,
        nargs="+",
        metavar="N",
        help=f"instead: time and measure cluster_maps on one class of N synthetic "
        f"{MAP_SIZE}x{MAP_SIZE} maps (several N: one after another)",
    )
    parser.add_argument("--strategies-run", help=argparse.SUPPRESS)  # the child process
    parser.add_argument(
        "--host",
        action="store_true",
        help="instead: the host's work per image, whole processes: a plain tf.data + predict "
        "script against `python -m pipeline` variants, on a tiny 224x224 model",
    )
    parser.add_argument(
        "--host-model",
        choices=list(HOST_MODELS),
        default="tiny",
        help="--host: tiny (four strided convs, the issue's) or micro (two convs: the model "
        "costs almost nothing, as on a GPU, so only the host's own work is left)",
    )
    parser.add_argument(
        "--soak",
        type=int,
        metavar="N",
        help="instead: N manifest rows over --soak-images tiny PNGs, --shards shards, killed "
        "--kills times and resumed, merged; rows/s, peak RSS, files, bytes, every row once",
    )
    parser.add_argument("--soak-images", type=int, default=SOAK_IMAGES)
    parser.add_argument("--soak-chunk-batches", type=int, default=8, help="chunk_batches")
    parser.add_argument("--shards", type=int, default=2, help="--soak: shard.count")
    parser.add_argument("--kills", type=int, default=3, help="--soak: planned SIGKILLs")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="instead: time the full pipeline with each cam= method (all when none given) "
        "and report images/s relative to gradcam",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.strategies_run:
        return strategies_run(args.strategies_run)
    if args.strategies:
        return strategies_benchmark(args.strategies, args.seed, args.keep)
    if args.memory:
        return memory_benchmark(args.memory_sizes, args.seed, args.keep)
    if args.soak:
        return soak_benchmark(args)
    if args.methods is not None:
        return methods_benchmark(args)
    if args.host:
        return host_benchmark(args)
    return throughput_benchmark(args)


def throughput_benchmark(args: argparse.Namespace) -> int:
    """Inference and pipeline in alternating rounds, then the Keras example, on the same JPEGs."""
    import keras  # here, not at the top: --help and --strategies never load TensorFlow

    keras.utils.set_random_seed(args.seed)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number
    work = Path(tempfile.mkdtemp(prefix="gradcam-bench-"))
    try:
        log.info("generating %d JPEGs (%dx%d) in %s", args.n, *IMAGE_SIZE, work)
        images = make_images(work / "images", args.n, args.seed)
        # first batch: warm-up, not counted; missing files, so it writes nothing
        warmup = [work / "warmup" / f"missing_{i:05d}.jpg" for i in range(args.batch_size)]
        manifest = work / "manifest.csv"
        write_manifest(manifest, warmup + images)
        cfg = compose_config(args.model, manifest, args.batch_size, work / "pipeline_out", args.set)
        rounds = timed_rounds(args, cfg, manifest, warmup + images, len(warmup))
        reference = None
        if args.reference_n:
            ref_paths = [images[i % len(images)] for i in range(args.reference_n)]
            log.info("reference: %d + 1 warm-up images", len(ref_paths))
            reference = time_reference(cfg, ref_paths, work / "reference_out")
    finally:
        clean_up(work, args.keep)
    print_throughput(args, rounds, reference)
    print(json.dumps(throughput_summary(args, cfg.model.layer, rounds, reference, load_before)))
    return 0


def timed_rounds(
    args: argparse.Namespace, cfg, manifest: Path, rows: Sequence[Path], warmup: int
) -> Rounds:
    """--repeat rounds of inference then pipeline on `rows` (the first `warmup` untimed)."""
    work = manifest.parent  # the temp folder
    rounds = []  # inference and pipeline alternate, so a noisy spell hits both alike
    for rep in range(args.repeat):
        counts = (rep + 1, args.repeat, args.n, warmup)
        log.info("round %d/%d, inference: %d + %d warm-up images", *counts)
        inf = time_inference(cfg, rows, warmup)
        log.info("round %d/%d, pipeline: %d + %d warm-up images", *counts)
        out = work / f"pipeline_out_{rep}"
        cfg_rep = compose_config(args.model, manifest, args.batch_size, out, args.set)
        pipe, e2e = time_pipeline(cfg_rep, out, warmup)
        rounds.append((inf, pipe, e2e))
    # the round with the median pipeline/inference ratio stands for the run
    rounds.sort(key=lambda r: r[1].ips / r[0].ips)
    inference, pipeline, end_to_end = rounds[len(rounds) // 2]
    return Rounds(inference, pipeline, end_to_end, [round(p.ips / i.ips, 3) for i, p, _ in rounds])


def print_throughput(args: argparse.Namespace, rounds: Rounds, reference: Timing | None) -> None:
    """The throughput benchmark's settings and its table."""
    import keras  # loaded by the timed runs already; here for the versions
    import tensorflow as tf

    rows_out = [
        ("inference (tf.data + predict, no CAM)", rounds.inference),
        ("pipeline (run(): CAM + all outputs)", rounds.pipeline),
    ]
    if reference is not None:
        rows_out.append(("reference (Keras example, per image)", reference))
    rows_out.append(("pipeline end-to-end (build+trace+warm-up)", rounds.end_to_end))
    print(
        f"\nmodel={args.model} (weights=None) batch_size={args.batch_size} "
        f"images={IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG, {os.cpu_count()} CPU(s), "
        f"TF {tf.__version__}, Keras {keras.__version__}"
    )
    print(
        f"warm-up, not timed: one batch of {args.batch_size} (missing files, computed as zeros, "
        "nothing written) for inference and pipeline, one image for the reference.\n"
        "the end-to-end row times the whole run() call: model build, tracing, warm-up batch and "
        f"the {args.n} images\n"
        f"{args.repeat} rounds of inference then pipeline; shown: the round with the median "
        f"pipeline/inference ratio (all rounds: {rounds.ratios})"
    )
    print(table(rows_out))


def throughput_summary(
    args: argparse.Namespace,
    layer: str,
    rounds: Rounds,
    reference: Timing | None,
    load_before: float,
) -> dict:
    """The throughput benchmark's JSON line."""
    import keras  # loaded by the timed runs already; here for the versions
    import tensorflow as tf

    inference, pipeline = rounds.inference, rounds.pipeline
    ref_ips = reference.ips if reference is not None else None
    return {
        "inference_ips": round(inference.ips, 3),
        "pipeline_ips": round(pipeline.ips, 3),
        "reference_ips": round(ref_ips, 3) if ref_ips is not None else None,
        "pipeline_vs_inference": _ratio(pipeline.ips, inference.ips),
        "pipeline_vs_reference": _ratio(pipeline.ips, ref_ips),
        "pipeline_e2e_ips": round(rounds.end_to_end.ips, 3),
        "rounds_pipeline_vs_inference": rounds.ratios,
        "n": args.n,
        "reference_n": args.reference_n,
        "batch_size": args.batch_size,
        "model": args.model,
        "overrides": args.set,
        "layer": layer,
        "warmup": {"inference": args.batch_size, "pipeline": args.batch_size, "reference": 1},
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # start, end
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
