"""The batch loop: every chunk not yet committed goes through the compiled step; each batch's
files are handed to writer threads and its summary rows built, and a chunk is committed once
all its files are on disk."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
from tqdm import tqdm

from pipeline import stop
from pipeline.boxes import normalise_boxes, normalise_tolerance
from pipeline.cam.base import CamMethod
from pipeline.concurrency import one_ahead, writer_pool
from pipeline.config import DataConfig, HeatmapsConfig, MetricsConfig
from pipeline.data import bases, batches
from pipeline.errors import Stopped
from pipeline.faults import checkpoint
from pipeline.heatmaps import CHUNK_DTYPE, chunk_file, write_chunk
from pipeline.manifest import BOX_COLUMNS, resolve_labels
from pipeline.metrics import build_metrics
from pipeline.model import LoadedModel
from pipeline.outputs import safe_name, save_guided, save_heatmap
from pipeline.overlays import OverlayStyle, save_overlay
from pipeline.provenance import Timing
from pipeline.quiet import CONSOLE
from pipeline.resume import ChunkStore
from pipeline.step.build import build_step
from pipeline.step.forward import make_forward
from pipeline.step.outputs import StepOutputs
from pipeline.step.targets import TARGET_LABEL
from pipeline.summary import (
    BatchResult,
    FilePaths,
    RowContext,
    batch_rows,
    expand_ranks,
    require_labels,
)

log = logging.getLogger(__name__)
PENDING_BATCHES = 2  # batches whose files may still be in flight before their rows are written


@dataclass(frozen=True)
class LoopSettings:
    """The plain values the loop needs from the config."""

    batch_size: int
    topk: int  # model.topk
    target: int  # the step's target code (pipeline.step.targets)
    seed: int
    deterministic: bool
    jit_compile: bool
    pointing_tolerance: float  # pixels of the original image
    writer_threads: int
    progress: bool
    data: DataConfig
    heatmaps: HeatmapsConfig
    overlay_mode: str  # all: every ok row's overlay now; report or none: none now
    overlay_style: OverlayStyle
    metrics: MetricsConfig
    stop_grace_s: float = 30.0  # after a stop signal: time left to finish the chunk in flight


@dataclass(frozen=True)
class ChunkMaps:
    """One batch's maps, bound for its chunk's array file (heatmaps.format=chunks)."""

    file: str  # relative to the output folder
    slots: np.ndarray  # (n,) int: each map's index in the chunk array
    maps: np.ndarray  # (n,h,w) float32


@dataclass
class Pending:
    """A batch whose rows wait for its files."""

    chunk: int
    rows: pa.Table
    futures: list[Future]
    maps: ChunkMaps | None


class Committer:
    """Holds each batch's rows until its files are written; when a chunk is complete, writes
    its map array (chunks format) and then commits its rows."""

    def __init__(self, store: ChunkStore, out: Path):
        self.store, self.out = store, out
        self.pending: deque[Pending] = deque()
        self.parts: dict[int, list[Pending]] = {}

    def add(self, batch: Pending) -> None:
        self.pending.append(batch)

    def open_chunks(self) -> set[int]:
        """Chunks with batches handed over but not yet committed."""
        return {p.chunk for p in self.pending} | set(self.parts)

    def flush(self, limit: int) -> None:
        """Wait for the oldest batches' files until at most `limit` are pending; commit."""
        while len(self.pending) > limit:
            batch = self.pending.popleft()
            for future in batch.futures:
                future.result()  # a failed write stops the run: its chunk is never committed
            parts = self.parts.setdefault(batch.chunk, [])
            parts.append(batch)
            slots = len(self.store.chunk_rows_of(batch.chunk)) * self.store.items_per_row
            if sum(p.rows.num_rows for p in parts) == slots:
                self._commit(batch.chunk, self.parts.pop(batch.chunk), slots)

    def _commit(self, chunk: int, parts: list[Pending], slots: int) -> None:
        pieces = [p.maps for p in parts if p.maps is not None and len(p.maps.slots)]
        if pieces:  # error rows keep their all-zero slot; no summary row points to it
            maps = np.zeros((slots, *pieces[0].maps.shape[1:]), CHUNK_DTYPE)
            for piece in pieces:
                maps[piece.slots] = piece.maps
            write_chunk(self.out / pieces[0].file, maps)
        self.store.commit(chunk, pa.concat_tables([p.rows for p in parts]))


class BatchLoop:
    """Computes every chunk of `store` not yet committed, writing into `out`."""

    def __init__(
        self,
        settings: LoopSettings,
        table: pd.DataFrame,
        loaded: LoadedModel,
        method: CamMethod,
        store: ChunkStore,
        out: Path,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.s, self.table, self.loaded, self.store, self.out = settings, table, loaded, store, out
        self.ranks = store.items_per_row
        label_index, label_warnings = resolve_labels(table["label"], loaded.class_names)
        self.label_index = label_index
        self.rows_context = RowContext(table, label_warnings, loaded.class_names, method.name)
        self.boxes_px = table[BOX_COLUMNS].to_numpy(np.float64)  # (N,4)
        self.stems = [safe_name(r, i) for r, i in zip(table["row"], table["id"])]
        self.paths = table["path"].tolist()  # resolved: the overlays re-open the image
        keras.utils.set_random_seed(settings.seed)
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.step = build_step(
            loaded,
            method,
            settings.topk,
            settings.target,
            strategy=strategy,
            jit_compile=settings.jit_compile,
        )
        self.faithfulness = self._build_metrics()

    def _build_metrics(self):
        names = list(self.s.metrics.names)
        if not names:
            return None
        forward = make_forward(self.loaded)
        size, channels = self.loaded.input_size, self.loaded.channels
        return build_metrics(forward, names, self.s.metrics.steps, size, channels)

    def run(self) -> Timing:
        """Compute, write and commit every chunk not yet committed."""
        done = self.store.committed()
        todo = [r for c in range(self.store.n_chunks) if c not in done for r in self._rows(c)]
        if done:
            log.info(
                "resuming: %d of %d chunks already committed",
                len(done),
                self.store.n_chunks,
                extra=CONSOLE,
            )
        log.info(  # the progress bar's heading
            "auditing %d of %d rows -> %s", len(todo), self.store.n_rows, self.out, extra=CONSOLE
        )
        n = self.store.n_rows
        bar = tqdm(
            total=n,
            initial=n - len(todo),
            unit="img",
            disable=not self.s.progress,
            dynamic_ncols=True,
        )
        committer, pool = Committer(self.store, self.out), writer_pool(self.s.writer_threads)
        start, first = time.perf_counter(), None
        try:
            # the dataset closed here, whatever ends the loop (see data.batches: EXIT)
            with (
                closing(self._dataset(todo)) as dataset,
                closing(one_ahead(self._compute, dataset)) as results,
            ):
                for result in results:
                    if self._stopping(committer, result):
                        break  # a stop signal: this batch starts a new chunk, or time is up
                    committer.add(self._emit(result, pool))
                    committer.flush(PENDING_BATCHES)
                    first = first or (time.perf_counter() - start, len(result.rows))
                    bar.update(len(result.rows))
                    if stop.requested() and not committer.open_chunks():
                        break  # the chunk in flight is committed
            committer.flush(0)  # after a stop: a chunk left incomplete is not committed
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)
        stopped = self._stopped() if stop.requested() else None
        if stopped is not None and stopped.rows_done < stopped.rows:
            raise stopped  # (a stop during the last chunk lets the run finish)
        first_seconds, first_rows = first or (0.0, 0)
        return Timing(len(todo), time.perf_counter() - start, first_seconds, first_rows)

    def _stopping(self, committer: Committer, result: BatchResult) -> bool:
        """After a stop signal: True for a batch of a chunk not yet begun, or when
        stop_grace_s is up (the chunk in flight is then left to the next run)."""
        if not stop.requested():
            return False
        if stop.expired(self.s.stop_grace_s):
            log.warning("stop_grace_s=%s is up: the chunk in flight is left", self.s.stop_grace_s)
            return True
        return self.store.chunk_of(int(result.rows[0])) not in committer.open_chunks()

    def _stopped(self) -> Stopped:
        """What a stopped run reports: its signal and the rows committed so far."""
        done = sum(len(self.store.chunk_rows_of(c)) for c in self.store.committed())
        return Stopped(stop.requested() or "a signal", done, self.store.n_rows)

    def _rows(self, chunk: int) -> list[int]:
        return [int(r) for r in self.store.chunk_rows_of(chunk)]

    def _dataset(self, todo: list[int]) -> Generator[dict[str, tf.Tensor], None, None]:
        shape = (*self.loaded.input_size, self.loaded.channels)
        paths = self.table["path"].tolist()
        side = self.s.overlay_style.max_side if self._base_side() else 0
        return batches(paths, todo, shape, self.s.batch_size, self.s.data, side)

    def _base_side(self) -> bool:
        """Whether tf.data hands the overlay writers their images (select=all, resize=bilinear)."""
        return self.s.overlay_mode == "all" and self.s.data.resize == "bilinear"

    def _compute(self, batch: dict[str, tf.Tensor]) -> BatchResult:
        """One batch through the compiled step (and the metrics); results as numpy."""
        rows = batch["row"].numpy()
        ok = batch["ok"].numpy()
        errors = [e.decode("utf-8") or None for e in batch["error"].numpy()]
        orig_hw = batch["orig_hw"].numpy()  # (B,2)
        labels = self.label_index[rows]
        boxes, box_valid, box_warnings = normalise_boxes(self.boxes_px[rows], orig_hw, ok)
        tolerance = normalise_tolerance(self.s.pointing_tolerance, orig_hw)  # (B,2)
        out = self.step(batch["image"], labels, boxes, box_valid, tolerance)
        metrics = self._metrics(batch["image"], out)
        if self.s.heatmaps.resolution != "input":  # (B,H,W) the host never reads: not copied
            out = out._replace(explanation=out.explanation._replace(map_input=None))
        result = BatchResult(
            rows,
            ok,
            errors,
            orig_hw,
            labels,
            box_warnings,
            _numpy(out),
            _numpy(metrics),
            bases=bases(batch) if "base" in batch else None,  # for the overlay writers
        )
        checkpoint("compute")
        return result

    def _metrics(self, images: tf.Tensor, out: StepOutputs) -> dict[str, tf.Tensor]:
        """Faithfulness columns, (B,) or (B,K) with target=topk: one call per rank."""
        if self.faithfulness is None:
            return {}
        exp = out.explanation
        if self.ranks == 1:
            return self.faithfulness(images, exp.map_input, exp.target_index)
        per_rank = [
            self.faithfulness(images, exp.map_input[:, r], exp.target_index[:, r])
            for r in range(self.ranks)
        ]
        return {key: tf.stack([p[key] for p in per_rank], axis=1) for key in per_rank[0]}

    def _emit(self, result: BatchResult, pool: ThreadPoolExecutor) -> Pending:
        """A computed batch -> its summary rows, the futures of its files, its chunk's maps."""
        if self.s.target == TARGET_LABEL:
            result = require_labels(result)
        result = expand_ranks(result, self.ranks)
        files, futures = self._write_files(result, pool)
        maps = None
        if self.s.heatmaps.enabled and self.s.heatmaps.format == "chunks":
            files, maps = self._chunk_maps(result, files)
        chunk = self.store.chunk_of(int(result.rows[0]))  # batches never straddle chunks
        return Pending(chunk, batch_rows(result, self.rows_context, files), futures, maps)

    def _maps(self, result: BatchResult) -> np.ndarray:  # (B,h,w) or (B,H,W)
        exp = result.out.explanation
        return exp.map_input if self.s.heatmaps.resolution == "input" else exp.map

    def _chunk_maps(self, result: BatchResult, files: FilePaths) -> tuple[FilePaths, ChunkMaps]:
        """Where each ok row's map goes in its chunk's array: slot = position x ranks + rank."""
        chunk_rows = self.store.chunk_rows_of(self.store.chunk_of(int(result.rows[0])))
        name = chunk_file(int(chunk_rows[0]), self.store.chunk_rows)
        ok = np.flatnonzero(result.ok)
        slots = np.searchsorted(chunk_rows, result.rows[ok]) * self.ranks + result.rank[ok]
        n = len(result.rows)
        index: list[int | None] = [None] * n
        for i, slot in zip(ok, slots):
            index[i] = int(slot)
        named = [name if k else None for k in result.ok]
        files = replace(files, heatmap_file=named, heatmap_index=index)
        return files, ChunkMaps(name, slots, self._maps(result)[ok])

    def _write_files(
        self, result: BatchResult, pool: ThreadPoolExecutor
    ) -> tuple[FilePaths, list[Future]]:
        """Hand each ok row's map (files format), guided map and overlay to the writers."""
        n, exp = len(result.rows), result.out.explanation
        files = FilePaths([None] * n, [None] * n, [None] * n)
        futures: list[Future] = []
        maps = self._maps(result)
        for i in np.flatnonzero(result.ok):
            row = int(result.rows[i])
            stem = self.stems[row] + (f"-k{result.rank[i]}" if self.ranks > 1 else "")
            if self.s.heatmaps.enabled and self.s.heatmaps.format == "files":
                files.heatmap[i] = f"heatmaps/{stem}.npy"
                futures.append(pool.submit(save_heatmap, self.out / files.heatmap[i], maps[i]))
            if exp.guided is not None:
                files.guided[i] = f"guided/{stem}.npy"
                futures.append(pool.submit(save_guided, self.out / files.guided[i], exp.guided[i]))
            if self.s.overlay_mode == "all":
                files.overlay[i] = f"overlays/{stem}.jpg"
                heat, style = self._as_stored(maps[i]), self.s.overlay_style
                base = None if result.bases is None else result.bases[i]
                args = (self.out / files.overlay[i], self.paths[row], heat, style, base)
                futures.append(pool.submit(save_overlay, *args))
        return files, futures

    def _as_stored(self, heat: np.ndarray) -> np.ndarray:
        """The map as saved (chunks: float16), so a later render gives the same pixels."""
        chunks = self.s.heatmaps.enabled and self.s.heatmaps.format == "chunks"
        return heat.astype(CHUNK_DTYPE) if chunks else heat


def _numpy(tensors):
    """A (nested) structure of tensors as numpy arrays (None stays None)."""
    return tf.nest.map_structure(lambda t: None if t is None else t.numpy(), tensors)
