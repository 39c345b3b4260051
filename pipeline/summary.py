"""The summary's rows, defined once: the schema, one batch's rows, and error counts.

No TensorFlow here: this module is tested on its own and read by the light commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.manifest import BOX_COLUMNS
from pipeline.step.outputs import StepOutputs

SUMMARY_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("path", pa.string()),
        ("status", pa.string()),
        ("method", pa.string()),
        ("rank", pa.int32()),
        ("error", pa.string()),
        ("warning", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int32()),
        ("group", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("pred_index", pa.int32()),
        ("pred_label", pa.string()),
        ("pred_score", pa.float32()),
        ("topk_index", pa.list_(pa.int32())),
        ("topk_score", pa.list_(pa.float32())),
        ("target_index", pa.int32()),
        ("target_label", pa.string()),
        ("target_score", pa.float32()),
        ("correct", pa.bool_()),
        ("heatmap_path", pa.string()),  # heatmaps.format=files: the map's own .npy
        ("heatmap_file", pa.string()),  # heatmaps.format=chunks: the chunk file holding it
        ("heatmap_index", pa.int32()),  # ... and its index along the file's first axis
        ("overlay_path", pa.string()),
        ("guided_path", pa.string()),
        ("cam_max", pa.float32()),
        ("cam_mean", pa.float32()),
        ("cam_entropy", pa.float32()),
        ("peak_x", pa.float32()),
        ("peak_y", pa.float32()),
        ("centroid_x", pa.float32()),
        ("centroid_y", pa.float32()),
        ("spread", pa.float32()),
        ("coverage", pa.float32()),
        ("border_fraction", pa.float32()),
        ("energy_in_box", pa.float32()),
        ("pointing_hit", pa.bool_()),
        ("deletion_auc", pa.float32()),
        ("insertion_auc", pa.float32()),
        ("drop_in_confidence", pa.float32()),
        ("increase_in_confidence", pa.float32()),
        ("cluster", pa.int32()),  # strategy cluster within the class; filled by the report
    ]
)
DEFAULTS = {"cluster": -1}  # columns the batch loop leaves to later stages


def summary_table(columns: dict[str, list | np.ndarray | pa.Array]) -> pa.Table:
    """One batch of summary rows: a value list/array per schema column (missing -> nulls);
    Arrow arrays are cast to the column's type."""
    n = len(next(iter(columns.values())))
    unknown = set(columns) - set(SUMMARY_SCHEMA.names)
    if unknown:  # e.g. a statistic or metric renamed on one side only
        raise KeyError(f"not summary columns: {sorted(unknown)}; see SUMMARY_SCHEMA")
    arrays = []
    for column in SUMMARY_SCHEMA:
        values = columns.get(column.name)
        if values is None and column.name in DEFAULTS:
            arrays.append(pa.array([DEFAULTS[column.name]] * n, type=column.type))
        elif values is None:
            arrays.append(pa.nulls(n, column.type))
        elif isinstance(values, pa.Array):
            arrays.append(values if values.type == column.type else values.cast(column.type))
        else:
            arrays.append(pa.array(values, type=column.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=SUMMARY_SCHEMA)


def error_kinds(errors: pd.Series, top: int = 5) -> list[tuple[str, int]]:
    """The commonest error messages, paths and details stripped: [(kind, count)]."""
    kinds = errors.dropna().map(lambda m: re.split(r"[:(]", m, maxsplit=1)[0].strip())
    return [(k, int(n)) for k, n in kinds.value_counts().head(top).items()]


@dataclass(frozen=True)
class BatchResult:
    """One batch after the step, as numpy: one entry per image or, after expand_ranks, per
    summary row (image x rank)."""

    rows: np.ndarray  # (B,) int64: manifest rows
    ok: np.ndarray  # (B,) bool: the image loaded (and, with target=label, has a label)
    errors: list[str | None]  # (B,) why a row is not ok
    orig_hw: np.ndarray  # (B,2) int: the original image's (height, width)
    labels: np.ndarray  # (B,) int32: label index, -1 for none
    box_warnings: list[str | None]  # (B,)
    out: StepOutputs  # numpy arrays; explanation fields (B,K,...) with target=topk
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (B,) or (B,K)
    rank: np.ndarray | None = None  # (B,) int32 after expand_ranks
    bases: list[np.ndarray | None] | None = None  # (B,) (h,w,3) overlay bases from tf.data


@dataclass(frozen=True)
class RowContext:
    """What every batch's rows share: the manifest and the model's classes. The manifest's
    columns are converted to Arrow once, so a batch's rows are a `take` of them."""

    table: pd.DataFrame  # the manifest as read (one row per manifest row)
    label_warnings: list[str | None]  # per manifest row
    class_names: list[str]
    method: str  # cam.name
    manifest: pa.RecordBatch = field(init=False, repr=False)  # MANIFEST_COLUMNS + warning
    names: pa.Array = field(init=False, repr=False)  # class_names as strings

    def __post_init__(self) -> None:
        arrays = [
            pa.array(self.table[MANIFEST_COLUMNS.get(c, c)], SUMMARY_SCHEMA.field(c).type,
                     from_pandas=True)  # NaN boxes -> null
            for c in _FROM_MANIFEST
        ]  # fmt: skip
        arrays.append(pa.array(self.label_warnings, pa.string()))
        batch = pa.RecordBatch.from_arrays(arrays, names=[*_FROM_MANIFEST, "warning"])
        object.__setattr__(self, "manifest", batch)
        object.__setattr__(self, "names", pa.array(self.class_names, pa.string()))


_FROM_MANIFEST = ("id", "path", "label", "group", *BOX_COLUMNS)  # summary columns, as read
MANIFEST_COLUMNS = {"path": "manifest_path"}  # summary column -> the manifest table's


@dataclass(frozen=True)
class FilePaths:
    """Each summary row's files, relative to the output folder (None: not written)."""

    heatmap: list[str | None]  # heatmaps.format=files
    overlay: list[str | None]
    guided: list[str | None]
    heatmap_file: list[str | None] | None = None  # heatmaps.format=chunks
    heatmap_index: list[int | None] | None = None


def require_labels(batch: BatchResult) -> BatchResult:
    """target=label: rows without a usable label become error rows."""
    missing = batch.ok & (batch.labels < 0)
    if not missing.any():
        return batch
    errors = [
        "target=label but the row has no usable label" if m else e
        for m, e in zip(missing, batch.errors)
    ]
    return replace(batch, ok=batch.ok & ~missing, errors=errors)


def expand_ranks(batch: BatchResult, ranks: int) -> BatchResult:
    """One entry per summary row: K per image with target=topk (image-major, rank minor)."""
    n = len(batch.rows)
    img = np.repeat(np.arange(n), ranks)
    rank = np.tile(np.arange(ranks), n).astype(np.int32)
    if ranks == 1:
        return replace(batch, rank=rank)
    flat = _map_arrays(lambda a: a.reshape(n * ranks, *a.shape[2:]), batch.out.explanation)
    predictions = _map_arrays(lambda a: a[img], batch.out.predictions)
    return replace(
        batch,
        rows=batch.rows[img],
        ok=batch.ok[img],
        errors=[batch.errors[i] for i in img],
        orig_hw=batch.orig_hw[img],
        labels=batch.labels[img],
        box_warnings=[batch.box_warnings[i] for i in img],
        bases=None if batch.bases is None else [batch.bases[i] for i in img],
        out=StepOutputs(predictions, flat),
        metrics={k: v.reshape(n * ranks) for k, v in batch.metrics.items()},
        rank=rank,
    )


def _map_arrays(fn: Callable[[np.ndarray], np.ndarray], values: tuple) -> tuple:
    """fn applied to every array of a (nested) NamedTuple; None stays None."""
    mapped = [
        None if v is None else _map_arrays(fn, v) if isinstance(v, tuple) else fn(v) for v in values
    ]
    return type(values)(*mapped)


def batch_rows(batch: BatchResult, ctx: RowContext, files: FilePaths) -> pa.Table:
    """The summary rows of one batch (after expand_ranks), in SUMMARY_SCHEMA: Arrow arrays
    built per column (the manifest's taken from ctx, the step's masked where a row is not ok
    or a float is NaN), no Python per row but the messages."""
    ok, labels = batch.ok, batch.labels
    pred, exp = batch.out.predictions, batch.out.explanation
    sub = ctx.manifest.take(pa.array(batch.rows, pa.int64()))
    stats = exp.stats._asdict()
    hit = np.asarray(stats.pop("pointing_hit"))
    warnings = sub["warning"].to_pylist()
    pred_index, target_index = _masked(pred.pred_index, ok), _masked(exp.target_index, ok)
    columns = {
        "row": batch.rows,
        **{c: sub[c] for c in _FROM_MANIFEST},
        "status": np.where(ok, "ok", "error").tolist(),
        "method": [ctx.method] * len(ok),
        "rank": batch.rank,
        "error": [None if k else e for k, e in zip(ok, batch.errors)],
        "warning": [_join(w, b) for w, b in zip(warnings, batch.box_warnings)],
        "label_index": _masked(labels, labels >= 0),
        "width": _masked(batch.orig_hw[:, 1], ok),
        "height": _masked(batch.orig_hw[:, 0], ok),
        "pred_index": pred_index,
        "pred_label": ctx.names.take(pred_index),
        "pred_score": _masked(pred.pred_score, ok),
        "topk_index": _lists(pred.topk_index, ok),
        "topk_score": _lists(pred.topk_score, ok),
        "target_index": target_index,
        "target_label": ctx.names.take(target_index),
        "target_score": _masked(exp.target_score, ok),
        "correct": _masked(pred.pred_index == labels, ok & (labels >= 0)),
        "heatmap_path": files.heatmap,
        "heatmap_file": files.heatmap_file,
        "heatmap_index": files.heatmap_index,
        "overlay_path": files.overlay,
        "guided_path": files.guided,
        "cam_max": _masked(exp.cam_max, ok),
        **{c: _masked(v, ok) for c, v in stats.items()},
        "pointing_hit": _masked(hit > 0.5, ok & ~np.isnan(hit)),
        **{c: _masked(v, ok) for c, v in batch.metrics.items()},
    }
    return summary_table(columns)


def _masked(values: np.ndarray, keep: np.ndarray) -> pa.Array:
    """values (B,) as an Arrow array, null where keep is False or a float is NaN."""
    values = np.asarray(values)
    null = ~np.asarray(keep, bool)
    if values.dtype.kind == "f":
        null = null | np.isnan(values)
    return pa.array(values, mask=null)


def _lists(values: np.ndarray, keep: np.ndarray) -> pa.Array:
    """values (B,k) as a list array: one list per row, null where keep is False (NaN: null)."""
    n, k = values.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
    flat = _masked(values.reshape(-1), np.ones(n * k, bool))
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~np.asarray(keep, bool)))


def _join(*messages: str | None) -> str | None:
    parts = [m for m in messages if m]
    return "; ".join(parts) if parts else None
