"""run(cfg) wires the stages; main() is the Hydra shell around it (the only config reader)."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pipeline import CONF_DIR, __version__
from pipeline.cli.common import check_error_budget, one_line
from pipeline.config import check_strategies, register_configs
from pipeline.errors import ConfigError
from pipeline.faults import checkpoint
from pipeline.manifest import BOX_COLUMNS, read_manifest, resolve_labels
from pipeline.outputs import (
    safe_name,
    save_guided,
    save_heatmap,
    save_overlay,
    write_json,
)
from pipeline.resume import check_writable, fingerprint, is_complete, mark_complete, prepare
from pipeline.shards import check_shard, shard_dir, shard_rows
from pipeline.summary import error_kinds, summary_table

log = logging.getLogger(__name__)
PENDING_BATCHES = 2  # batches whose files may still be in flight before their rows are written
T = TypeVar("T")
R = TypeVar("R")
WRITER_NICE = 10  # writer threads' priority below the compute threads' (Linux)
PER_IMAGE = {"topk_index", "topk_score", "pred_index", "pred_score"}  # the same for every rank


@dataclass
class RunResult:
    output_dir: Path
    rows: int
    ok: int
    errors: int
    seconds: float
    class_table: str
    top_errors: list[tuple[str, int]]


def sha256(path: Path) -> str | None:
    """SHA-256 of a file (None for anything else)."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_boxes(
    boxes: np.ndarray, orig_hw: np.ndarray, loaded: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list]:
    """Pixel boxes (B,4) + image sizes (B,2) -> ([0,1] boxes (B,4), valid (B,), warnings).

    Rows whose image did not load (loaded False) get neither a valid box nor a warning.
    """
    h = orig_hw[:, 0:1].astype(np.float64)
    w = orig_hw[:, 1:2].astype(np.float64)
    present = np.isfinite(boxes)
    complete = present.all(axis=1)
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    with np.errstate(invalid="ignore"):
        ordered = (x1 > x0) & (y1 > y0)
        inside = (x0 >= -1) & (y0 >= -1) & (x1 <= w[:, 0] + 1) & (y1 <= h[:, 0] + 1)
        scale = np.concatenate([w, h, w, h], axis=1)
        norm = np.clip(np.nan_to_num(boxes / np.maximum(scale, 1)), 0.0, 1.0).astype(np.float32)
    valid = complete & ordered & inside & loaded
    warnings: list[str | None] = []
    for i in range(len(boxes)):
        if not loaded[i]:
            warnings.append(None)
        elif present[i].any() and not complete[i]:
            warnings.append("incomplete box (needs x0, y0, x1, y1); box statistics left empty")
        elif complete[i] and not ordered[i]:
            warnings.append("box has x1<=x0 or y1<=y0; box statistics left empty")
        elif complete[i] and not inside[i]:
            warnings.append(
                f"box ({', '.join(f'{float(v):g}' for v in boxes[i])}) lies outside the "
                f"{int(w[i, 0])}x{int(h[i, 0])} image; "
                "box statistics left empty"
            )
        else:
            warnings.append(None)
    return norm, valid, warnings


def normalise_tolerance(tolerance: float, orig_hw: np.ndarray) -> np.ndarray:
    """The pointing game's tolerance in original-image pixels + image sizes (B,2) = (h,w) ->
    the tolerance as a share of each image's (width, height): (B,2) float32."""
    w_h = np.maximum(orig_hw[:, ::-1].astype(np.float64), 1.0)  # (B,2); 1 where nothing loaded
    return (tolerance / w_h).astype(np.float32)


def _join(*messages: str | None) -> str | None:
    parts = [m for m in messages if m]
    return "; ".join(parts) if parts else None


def _nullable(values: np.ndarray, keep: np.ndarray) -> list:
    """Values as a list with None where keep is False (and where float values are NaN)."""
    out = []
    for value, k in zip(values.tolist(), keep):
        if not k or (isinstance(value, float) and value != value):
            out.append(None)
        else:
            out.append(value)
    return out


def _validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}; expected a positive integer")
    if cfg.chunk_batches < 1:
        raise ConfigError(f"chunk_batches={cfg.chunk_batches}; expected a positive integer")
    if cfg.heatmaps.resolution not in ("layer", "input"):
        raise ConfigError(
            f"heatmaps.resolution={cfg.heatmaps.resolution!r}; expected layer or input"
        )
    if not 0.0 <= cfg.overlays.alpha <= 1.0:
        raise ConfigError(f"overlays.alpha={cfg.overlays.alpha}; expected a value in [0, 1]")
    if cfg.overlays.max_side < 8:
        raise ConfigError(f"overlays.max_side={cfg.overlays.max_side}; expected at least 8")
    if cfg.devices not in ("auto", "all"):
        raise ConfigError(f"devices={cfg.devices!r}; expected auto or all")
    if cfg.precision not in ("float32", "mixed_float16"):
        raise ConfigError(f"precision={cfg.precision!r}; expected float32 or mixed_float16")
    check_shard(cfg.shard.count, cfg.shard.index)
    from pipeline.metrics import check_names

    check_names(list(cfg.metrics.names))
    if cfg.metrics.steps < 1:
        raise ConfigError(f"metrics.steps={cfg.metrics.steps}; expected a positive integer")
    if cfg.report.group_by not in ("target", "label"):
        raise ConfigError(f"report.group_by={cfg.report.group_by!r}; expected target or label")
    if cfg.stats.pointing_tolerance < 0:
        raise ConfigError(
            f"stats.pointing_tolerance={cfg.stats.pointing_tolerance}; expected a value >= 0 "
            "(pixels of the original image)"
        )
    check_strategies(cfg.strategies)
    if not 0.0 <= cfg.max_error_rate <= 1.0:
        raise ConfigError(f"max_error_rate={cfg.max_error_rate}; expected a value in [0, 1]")


def _inputs(cfg: DictConfig) -> tuple[str, str | None, object]:
    """(manifest path, model path, class names), building the demo when it is asked for."""
    from pipeline.demo import ensure_demo

    model_cfg = cfg.model
    manifest_path = cfg.data.manifest
    model_path = None if OmegaConf.is_missing(model_cfg, "path") else model_cfg.path
    class_names = OmegaConf.to_container(model_cfg, resolve=True)["class_names"]
    if model_cfg.name == "demo":
        demo = cfg.demo
        assets = ensure_demo(
            demo.cache_dir, demo.n_per_class, demo.image_size, demo.epochs, demo.seed
        )
        model_path = model_path or str(assets.model)
        class_names = class_names if class_names is not None else str(assets.class_names)
        manifest_path = manifest_path or str(assets.manifest)
    if not manifest_path:
        raise ConfigError("data.manifest is required: data.manifest=images.csv (or run the demo)")
    return manifest_path, model_path, class_names


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> RunResult:
    """Audit one manifest with one model as configured; resumes what `output_dir` holds."""
    from pipeline.cam import get_method
    from pipeline.model import load_model

    started = time.perf_counter()
    out = Path(output_dir if output_dir is not None else cfg.output_dir)
    _validate(cfg)
    manifest_path, model_path, class_names = _inputs(cfg)
    table = read_manifest(manifest_path)
    m = cfg.model
    strategy = make_strategy(cfg.devices)
    with strategy.scope() if strategy else nullcontext(), dtype_policy(cfg.precision):
        loaded = load_model(
            m.name,
            model_path,
            m.weights,
            m.layer,
            m.preprocess,
            class_names,
            m.score,
            m.input_size,
            safe_mode=m.safe_mode,
        )
    options = (
        {"max_channels": cfg.cam.max_channels, "channels_per_pass": cfg.cam.batch_size}
        if cfg.cam.name == "scorecam"
        else {}
    )
    method = get_method(cfg.cam.name, **options)
    if cfg.cam.eigen_smooth and method.needs_forward:
        raise ConfigError(f"cam.eigen_smooth does not apply to cam={cfg.cam.name}")
    from pipeline.step import TARGET_TOPK, target_code

    code = target_code(cfg.target, len(loaded.class_names))
    ranks = min(cfg.model.topk, len(loaded.class_names)) if code == TARGET_TOPK else 1
    own = shard_dir(out, cfg.shard.count, cfg.shard.index)  # summary, state, run.json
    check_writable(own)
    config = OmegaConf.to_container(cfg, resolve=True)
    hashes = {
        "manifest": sha256(Path(manifest_path)),
        "model": sha256(Path(model_path)) if model_path else None,
        "weights": sha256(Path(m.weights)) if m.weights else None,
    }
    fp = fingerprint(config, hashes["manifest"], f"{hashes['model']}/{hashes['weights']}")
    timing: dict[str, float] = {}
    chunk = cfg.batch_size * cfg.chunk_batches
    rows = shard_rows(len(table), cfg.shard.count, cfg.shard.index, block=chunk)
    stems = {safe_name(r, i) for r, i in zip(table["row"].to_numpy()[rows], table["id"][rows])}
    if cfg.resume and is_complete(own, fp):
        log.info("%s is already complete for this config; nothing to compute", own)
    else:
        store = prepare(own, out, fp, cfg.resume, rows, chunk, stems, ranks)
        _audit(cfg, table, loaded, method, code, store, out, strategy, timing)
        store.finalize()
        mark_complete(own)
    summary = pd.read_parquet(own / "summary.parquet", columns=["status", "error"])
    counts = {"ok": int((summary["status"] == "ok").sum())}
    counts["error"] = len(summary) - counts["ok"]
    seconds = time.perf_counter() - started
    record = _run_record(
        cfg, config, loaded, manifest_path, hashes, counts, len(rows), seconds, timing
    )
    write_json(own / "run.json", record)
    log.info(
        "done: %d rows, %d ok, %d errors in %.1f s (%s img/s); outputs in %s",
        len(rows),
        counts["ok"],
        counts["error"],
        seconds,
        record["timing"]["images_per_second"],
        own,
    )
    text = ""
    if cfg.report.enabled and cfg.shard.count == 1:  # shards: the report comes with the merge
        from pipeline.report import build_audit

        audit = build_audit(
            out, OmegaConf.to_object(cfg.report), OmegaConf.to_object(cfg.strategies), cfg.seed
        )
        text = _class_lines(audit.classes)
    return RunResult(
        out, len(rows), counts["ok"], counts["error"], seconds, text, error_kinds(summary["error"])
    )


def make_strategy(devices: str):
    """None for TensorFlow's own placement; a MirroredStrategy over every GPU (or, without GPUs,
    every logical CPU device) for devices=all."""
    if devices != "all":
        return None
    import tensorflow as tf

    names = [d.name for d in tf.config.list_logical_devices("GPU")]
    names = names or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(names) < 2:
        log.info("devices=all: one device (%s), no strategy needed", names)
        return None
    log.info("devices=all: MirroredStrategy over %s", names)
    return tf.distribute.MirroredStrategy(names)


@contextmanager
def dtype_policy(precision: str):
    """Keras's global dtype policy while the model is built (mixed_float16 on GPUs)."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _audit(cfg, table, loaded, method, code, store, out, strategy, timing: dict) -> None:
    """Compute every chunk not yet committed; each is committed once its files are written."""
    import keras
    import tensorflow as tf

    from pipeline.data import Bases, make_dataset
    from pipeline.metrics import COLUMNS, build_metrics
    from pipeline.stats import STAT_COLUMNS
    from pipeline.step import TARGET_LABEL, build_step, make_forward

    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    done = store.committed()
    todo = [int(r) for c in range(store.n_chunks) if c not in done for r in store.chunk_rows_of(c)]
    if done:
        log.info("resuming: %d of %d chunks already committed", len(done), store.n_chunks)
    names = loaded.class_names
    label_index, label_warnings = resolve_labels(table["label"], names)
    step = build_step(
        loaded,
        method,
        cfg.model.topk,
        code,
        strategy=strategy,
        jit_compile=cfg.jit_compile,
        aug_smooth=cfg.cam.aug_smooth,
        eigen_smooth=cfg.cam.eigen_smooth,
        colour=cfg.overlays.enabled,
    )
    heat_dir, overlay_dir = out / "heatmaps", out / "overlays"
    base_side = cfg.overlays.max_side if cfg.overlays.enabled else 0
    ranks = store.items_per_row
    names_m = list(cfg.metrics.names)
    faithfulness = (
        build_metrics(
            make_forward(loaded), names_m, cfg.metrics.steps, loaded.input_size, loaded.channels
        )
        if names_m
        else None
    )
    bases = Bases()
    dataset = make_dataset(
        table["path"].tolist(),
        todo,
        loaded.input_size,
        loaded.channels,
        cfg.batch_size,
        base_side=base_side,
        max_pixels=cfg.data.max_pixels,
        parallel=cfg.data.num_parallel_calls,
        prefetch=cfg.data.prefetch,
        bases=bases,
    )
    boxes_px = table[BOX_COLUMNS].to_numpy(np.float64)  # (N,4)
    tolerance_px = float(cfg.stats.pointing_tolerance)
    stems = [safe_name(r, i) for r, i in zip(table["row"], table["id"])]
    pool = writer_pool(cfg.writer_threads)
    pending: deque[tuple[int, pa.Table, list[Future]]] = deque()
    chunk_tables: dict[int, list[pa.Table]] = {}
    start = time.perf_counter()

    def flush(limit: int) -> None:
        """Wait for the oldest batches' files; commit every chunk that is then complete."""
        while len(pending) > limit:
            chunk, batch_table, futures = pending.popleft()
            for future in futures:
                future.result()  # a failed write stops the run: its chunk is never committed
            parts = chunk_tables.setdefault(chunk, [])
            parts.append(batch_table)
            if sum(t.num_rows for t in parts) == len(store.chunk_rows_of(chunk)) * ranks:
                store.commit(chunk, pa.concat_tables(chunk_tables.pop(chunk)))

    log.info("auditing %d of %d rows -> %s", len(todo), store.n_rows, out)
    bar = tqdm(
        total=store.n_rows,
        initial=store.n_rows - len(todo),
        unit="img",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )

    def compute(batch: dict) -> tuple:
        """One batch through the compiled step (and the metrics); results as numpy."""
        rows = batch["row"].numpy()
        ok = batch["ok"].numpy()
        errors = [e.decode("utf-8") or None for e in batch["error"].numpy()]
        orig_hw = batch["orig_hw"].numpy()
        labels = label_index[rows]
        boxes, box_valid, box_warnings = normalise_boxes(boxes_px[rows], orig_hw, ok)
        tolerance = normalise_tolerance(tolerance_px, orig_hw)  # (B,2)
        out_t = step(batch["image"], labels, boxes, box_valid, tolerance)
        if faithfulness is not None:
            per_rank = [
                faithfulness(
                    batch["image"],
                    out_t["map_input"][:, r] if ranks > 1 else out_t["map_input"],
                    out_t["target_index"][:, r] if ranks > 1 else out_t["target_index"],
                )
                for r in range(ranks)
            ]
            out_t.update(
                {
                    key: tf.stack([p[key] for p in per_rank], axis=1)
                    if ranks > 1
                    else per_rank[0][key]
                    for key in per_rank[0]
                }
            )
        res = {k: v.numpy() for k, v in out_t.items()}
        checkpoint("compute")
        return rows, ok, errors, orig_hw, labels, box_warnings, res

    try:
        for rows, ok, errors, orig_hw, labels, box_warnings, res in one_ahead(compute, dataset):
            if code == TARGET_LABEL:
                for i in np.flatnonzero(ok & (labels < 0)):
                    ok[i] = False
                    errors[i] = "target=label but the row has no usable label"
            # one summary row per (image, rank): K rows per image with target=topk, else 1
            img = np.repeat(np.arange(len(rows)), ranks)
            rank = np.tile(np.arange(ranks), len(rows)).astype(np.int32)
            if ranks > 1:
                for key, value in res.items():
                    res[key] = (
                        value[img]
                        if key in PER_IMAGE
                        else value.reshape(len(rows) * ranks, *value.shape[2:])
                    )
                rows, ok, orig_hw, labels = rows[img], ok[img], orig_hw[img], labels[img]
                errors = [errors[i] for i in img]
                box_warnings = [box_warnings[i] for i in img]
            futures: list[Future] = []
            heat_paths: list[str | None] = [None] * len(rows)
            overlay_paths: list[str | None] = [None] * len(rows)
            guided_paths: list[str | None] = [None] * len(rows)
            batch_bases = {int(r): bases.pop(int(r)) for r in np.unique(rows)}
            maps = res["map_input"] if cfg.heatmaps.resolution == "input" else res["map"]
            for i in np.flatnonzero(ok):
                stem = stems[rows[i]] + (f"-k{rank[i]}" if ranks > 1 else "")
                if cfg.heatmaps.enabled:
                    heat_paths[i] = f"heatmaps/{stem}.npy"
                    futures.append(pool.submit(save_heatmap, heat_dir / f"{stem}.npy", maps[i]))
                if "guided" in res:
                    guided_paths[i] = f"guided/{stem}.npy"
                    futures.append(
                        pool.submit(save_guided, out / guided_paths[i], res["guided"][i])
                    )
                if base_side:
                    overlay_paths[i] = f"overlays/{stem}.jpg"
                    futures.append(
                        pool.submit(
                            save_overlay,
                            overlay_dir / f"{stem}.jpg",
                            batch_bases[rows[i]],
                            res["colour"][i],
                            cfg.overlays.alpha,
                            cfg.overlays.quality,
                        )
                    )
            has_label = labels >= 0
            sub = table.iloc[rows]
            columns = {
                "row": rows,
                "id": sub["id"].tolist(),
                "path": sub["manifest_path"].tolist(),
                "status": np.where(ok, "ok", "error").tolist(),
                "method": [method.name] * len(rows),
                "rank": rank,
                "error": [None if k else e for k, e in zip(ok, errors)],
                "warning": [_join(label_warnings[r], bw) for r, bw in zip(rows, box_warnings)],
                "label": sub["label"].tolist(),
                "label_index": _nullable(labels, has_label),
                "group": sub["group"].tolist(),
                "width": _nullable(orig_hw[:, 1], ok),
                "height": _nullable(orig_hw[:, 0], ok),
                **{c: sub[c].tolist() for c in BOX_COLUMNS},
                "pred_index": _nullable(res["pred_index"], ok),
                "pred_label": [names[p] if k else None for p, k in zip(res["pred_index"], ok)],
                "pred_score": _nullable(res["pred_score"], ok),
                "topk_index": [t.tolist() if k else None for t, k in zip(res["topk_index"], ok)],
                "topk_score": [t.tolist() if k else None for t, k in zip(res["topk_score"], ok)],
                "target_index": _nullable(res["target_index"], ok),
                "target_label": [names[t] if k else None for t, k in zip(res["target_index"], ok)],
                "target_score": _nullable(res["target_score"], ok),
                "correct": _nullable(res["pred_index"] == labels, ok & has_label),
                "heatmap_path": heat_paths,
                "overlay_path": overlay_paths,
                "guided_path": guided_paths,
                "cam_max": _nullable(res["cam_max"], ok),
                **{c: _nullable(res[c], ok) for c in STAT_COLUMNS if c != "pointing_hit"},
                "pointing_hit": _nullable(
                    res["pointing_hit"] > 0.5, ok & ~np.isnan(res["pointing_hit"])
                ),
                **{col: _nullable(res[col], ok) for col in COLUMNS.values() if col in res},
            }
            chunk = store.chunk_of(int(rows[0]))  # batches never straddle chunks
            pending.append((chunk, summary_table(columns), futures))
            flush(PENDING_BATCHES)
            if not timing:  # the first batch also pays for tracing the step
                timing.update(
                    first_batch_seconds=time.perf_counter() - start, first_batch_rows=len(rows)
                )
            bar.update(len(rows))
        flush(0)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    timing.update(compute_seconds=time.perf_counter() - start, computed_rows=len(todo))


def _yield_to_compute() -> None:
    """Lower the calling thread's priority by WRITER_NICE (Linux: nice is per thread)."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not a PRIO_PROCESS id
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICE)
    except OSError as exc:  # e.g. a sandbox that forbids it: run at normal priority
        log.debug("writer threads keep their priority: %s", exc)


def writer_pool(threads: int) -> ThreadPoolExecutor:
    """Threads for the files. On Linux they run at a lower priority, so when the cores are
    busy the compiled step keeps them and the writers fill the gaps; on a 2-core machine
    that lifted throughput by about a tenth (scripts/benchmark.py)."""
    return ThreadPoolExecutor(
        max_workers=max(1, threads), thread_name_prefix="writer", initializer=_yield_to_compute
    )


def one_ahead(compute: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """compute(item) for each item, in order, computing the next item in a thread while the
    caller handles this one: on CPU the compiled step overlaps the writing of the batch
    before it. An exception in compute is raised here, in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="step") as ahead:
        future: Future | None = None
        for item in items:
            following = ahead.submit(compute, item)
            if future is not None:
                yield future.result()
            future = following
        if future is not None:
            yield future.result()


def _rate(images: float, seconds: float) -> float | None:
    return round(images / seconds, 3) if images > 0 and seconds > 0 else None


def _class_lines(classes: pd.DataFrame) -> str:
    """The per-class table printed at the end of a run."""
    columns = [
        "class",
        "n",
        "accuracy",
        "pred_score_mean",
        "energy_in_box_mean",
        "border_fraction_mean",
        "n_clusters",
        "suspicion",
        "flagged",
    ]
    if "suspicion" in classes.columns:  # most suspicious first, as in report.html
        classes = classes.sort_values("suspicion", ascending=False, kind="stable")
    view = classes[[c for c in columns if c in classes.columns]].set_index("class")
    view = view.rename(columns=lambda c: c.removesuffix("_mean"))
    return view.to_string(float_format=lambda v: f"{v:.3f}")


def git_commit() -> str | None:
    """The project's git commit, when it runs from a checkout."""
    import subprocess

    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _run_record(cfg, config, loaded, manifest_path, hashes, counts, rows, seconds, timing) -> dict:
    """What run.json holds: counts, timing, model, inputs' hashes, versions, the config."""
    import keras
    import tensorflow as tf

    computed = timing.get("computed_rows", 0)
    compute = timing.get("compute_seconds", 0.0)
    first = timing.get("first_batch_seconds", 0.0)
    return {
        "gradcam_audit": __version__,
        "git_commit": git_commit(),
        "counts": {"rows": rows, "ok": counts["ok"], "errors": counts["error"]},
        "timing": {
            "seconds": round(seconds, 3),
            "computed_rows": computed,  # fewer than rows when the run resumed
            "compute_seconds": round(compute, 3),
            "images_per_second": _rate(computed, compute),
            "first_batch_seconds": round(first, 3),
            "steady_images_per_second": _rate(
                computed - timing.get("first_batch_rows", 0), compute - first
            ),
        },
        "model": {
            "source": loaded.source,
            "sha256": hashes["model"],
            "weights_sha256": hashes["weights"],
            "layer": loaded.layer_name,
            "input_size": list(loaded.input_size),
            "channels": loaded.channels,
            "classes": len(loaded.class_names),
            "class_names": list(loaded.class_names),
            "output_activation": loaded.output_activation,
        },
        "manifest": {"path": str(manifest_path), "sha256": hashes["manifest"]},
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "pyarrow": pa.__version__,
        },
        "config": config,
    }


# ----------------------------------------------------------------------------- command line

_task_started = False


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    print(f"gradcam-audit: error: {message}", file=sys.stderr)
    sys.exit(code)


def precheck(argv: list[str]) -> None:
    """Compose the config from the command line first, so a bad override fails in one line."""
    from hydra import compose, initialize_config_dir

    if any(arg.startswith("-") for arg in argv):  # --help, --cfg, -m ...: Hydra's own business
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("config", overrides=argv)
    except Exception as exc:  # hydra/omegaconf errors for unknown groups, keys, bad values
        fail(f"bad config: {one_line(exc)}")


def task(cfg: DictConfig) -> None:
    """The Hydra task: run, then print where the outputs are and the per-class table."""
    global _task_started
    _task_started = True
    from hydra.core.hydra_config import HydraConfig

    out = HydraConfig.get().runtime.output_dir
    if cfg.shard.count > 1:  # every shard writes into the one output_dir it names
        if "${now:" in str(OmegaConf.to_container(cfg, resolve=False).get("output_dir")):
            fail("sharded runs need an explicit output_dir=... shared by all shards")
        out = cfg.output_dir
    try:
        result = run(cfg, out)
    except ConfigError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(
            f"cannot write outputs ({exc}); everything committed so far is kept: run the same "
            "command again to resume",
            code=1,
        )
    print(
        f"\naudited {result.rows} rows: {result.ok} ok, {result.errors} errors "
        f"in {result.seconds:.1f} s"
    )
    print(f"outputs: {result.output_dir}  (summary.parquet, heatmaps/, overlays/, run.json)")
    if result.class_table:
        print(f"report: {result.output_dir / 'report.html'}")
        by = "explained class" if cfg.report.group_by == "target" else "true label"
        print(f"\nper class (by {by}):")
        print(result.class_table)
    if cfg.shard.count == 1:  # a sharded run's budget is checked when the shards are merged
        check_error_budget(result.rows, result.errors, result.top_errors, cfg.max_error_rate)


def shorthand(arg: str) -> str:
    """`metrics=[deletion,...]` means `metrics.names=[...]` (metrics.steps stays its own key)."""
    return "metrics.names=" + arg[len("metrics=") :] if arg.startswith("metrics=") else arg


def main() -> None:
    """Console entry point `gradcam-audit` (also `python -m pipeline`)."""
    import hydra

    register_configs()
    sys.argv[1:] = [shorthand(arg) for arg in sys.argv[1:]]
    precheck(sys.argv[1:])
    entry = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)
    try:
        entry()
    except SystemExit as exc:
        if exc.code == 1 and not _task_started:  # Hydra rejected the config before the task
            sys.exit(2)
        raise
