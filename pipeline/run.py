"""run(cfg): one audit of one manifest with one model, as configured; resumes what its output
folder holds. The command line around it is pipeline/cli/audit.py."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import cam
from pipeline.config import ModelConfig, validate
from pipeline.demo import ensure_demo
from pipeline.devices import dtype_policy, make_strategy
from pipeline.heatmaps import chunk_file
from pipeline.lock import holding
from pipeline.loop import BatchLoop, LoopSettings
from pipeline.manifest import read_manifest
from pipeline.model import load_model
from pipeline.outputs import safe_name, write_json
from pipeline.overlays import OverlayStyle, overlay_mode
from pipeline.provenance import Timing, input_hashes, run_record
from pipeline.report import build_audit
from pipeline.resume import check_writable, fingerprint, is_complete, mark_complete, prepare
from pipeline.shards import shard_dir, shard_rows
from pipeline.step.targets import TARGET_TOPK, target_code
from pipeline.summary import error_kinds

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    rows: int
    ok: int
    errors: int
    seconds: float
    class_table: str  # the per-class table printed at the end ("" without a report)
    top_errors: list[tuple[str, int]]


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> RunResult:
    """Audit one manifest with one model as configured; resumes what `output_dir` holds."""
    out = Path(output_dir if output_dir is not None else cfg.output_dir)
    validate(cfg)
    own = shard_dir(out, cfg.shard.count, cfg.shard.index)  # summary, state, run.json
    with holding(own):  # before any work: one run per folder (the command holds it till exit)
        return _run(cfg, out, own)


def _run(cfg: DictConfig, out: Path, own: Path) -> RunResult:
    """run() in its locked folder `own` (out itself, or a shard's folder in it)."""
    started = time.perf_counter()
    method = cam.from_config(OmegaConf.to_object(cfg.cam))
    manifest_path, spec = _inputs(cfg)
    table = read_manifest(manifest_path)
    strategy = make_strategy(cfg.devices)
    with strategy.scope() if strategy else nullcontext(), dtype_policy(cfg.precision):
        loaded = load_model(spec)
    code = target_code(cfg.target, len(loaded.class_names))
    ranks = min(cfg.model.topk, len(loaded.class_names)) if code == TARGET_TOPK else 1
    check_writable(own)
    config = OmegaConf.to_container(cfg, resolve=True)
    hashes = input_hashes(manifest_path, spec.path, spec.weights)
    fp = fingerprint(config, hashes["manifest"], f"{hashes['model']}/{hashes['weights']}")
    chunk = cfg.batch_size * cfg.chunk_batches
    rows = shard_rows(len(table), cfg.shard.count, cfg.shard.index, block=chunk)
    timing = Timing()
    if cfg.resume and is_complete(own, fp):
        log.info("%s is already complete for this config; nothing to compute", own)
    else:
        stems = {safe_name(r, i) for r, i in zip(table["row"].to_numpy()[rows], table["id"][rows])}
        stems |= {Path(chunk_file(r, chunk)).stem for r in rows[::chunk]}  # heatmaps/chunk-*.npy
        store = prepare(own, out, fp, cfg.resume, rows, chunk, stems, ranks)
        settings = _settings(cfg, code, len(table))
        loop = BatchLoop(settings, table, loaded, method, store, out, strategy)
        timing = loop.run()
        store.finalize()
        mark_complete(own)
    summary = pd.read_parquet(own / "summary.parquet", columns=["status", "error"])
    ok = int((summary["status"] == "ok").sum())
    counts = {"rows": len(rows), "ok": ok, "errors": len(summary) - ok}
    seconds = time.perf_counter() - started
    record = run_record(config, loaded, manifest_path, hashes, counts, timing, seconds)
    write_json(own / "run.json", record)
    log.info(
        "done: %d rows, %d ok, %d errors in %.1f s (%s img/s); outputs in %s",
        *counts.values(),
        seconds,
        record["timing"]["images_per_second"],
        own,
    )
    text = _report(cfg, out)
    return RunResult(out, *counts.values(), seconds, text, error_kinds(summary["error"]))


def _settings(cfg: DictConfig, code: int, n_rows: int) -> LoopSettings:
    """The loop's plain values, read from the config (n_rows: the whole manifest's)."""
    o = cfg.overlays
    return LoopSettings(
        batch_size=cfg.batch_size,
        topk=cfg.model.topk,
        target=code,
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        jit_compile=cfg.jit_compile,
        pointing_tolerance=float(cfg.stats.pointing_tolerance),
        writer_threads=cfg.writer_threads,
        progress=cfg.progress,
        data=OmegaConf.to_object(cfg.data),
        heatmaps=OmegaConf.to_object(cfg.heatmaps),
        overlay_mode=overlay_mode(o.select, o.enabled, n_rows, o.max_rows_all),
        overlay_style=OverlayStyle(o.max_side, o.alpha, o.quality, cfg.data.max_pixels),
        metrics=OmegaConf.to_object(cfg.metrics),
        stop_grace_s=float(cfg.stop_grace_s),
    )


def _inputs(cfg: DictConfig) -> tuple[str, ModelConfig]:
    """(manifest path, the model to load), building the demo when it is asked for."""
    model: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)
    if OmegaConf.is_missing(cfg.model, "path"):
        model["path"] = None
    spec = ModelConfig(**model)
    manifest_path = cfg.data.manifest
    if spec.name == "demo":
        assets = ensure_demo(OmegaConf.to_object(cfg.demo))
        spec.path = spec.path or str(assets.model)
        if spec.class_names is None:
            spec.class_names = str(assets.class_names)
        manifest_path = manifest_path or str(assets.manifest)
    return manifest_path, spec  # config.validate made sure there is a manifest


def _report(cfg: DictConfig, out: Path) -> str:
    """The class report (a sharded run's comes with the merge): the table printed at the end."""
    if not cfg.report.enabled or cfg.shard.count > 1:
        return ""
    report, strategies = OmegaConf.to_object(cfg.report), OmegaConf.to_object(cfg.strategies)
    audit = build_audit(out, report, strategies, cfg.seed)
    return class_lines(audit.classes)


def class_lines(classes: pd.DataFrame) -> str:
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
