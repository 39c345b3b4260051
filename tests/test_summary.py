"""Summary rows built from one batch's step outputs, on their own: no model, no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from pipeline.manifest import read_manifest
from pipeline.step.outputs import Explanation, Predictions, StepOutputs
from pipeline.summary import (
    SUMMARY_SCHEMA,
    BatchResult,
    FilePaths,
    RowContext,
    batch_rows,
    error_kinds,
    expand_ranks,
    require_labels,
    summary_table,
)

NAMES = ["cat", "dog", "fox"]
STATS = [
    "cam_mean", "cam_entropy", "peak_x", "peak_y", "centroid_x", "centroid_y", "spread",
    "coverage", "border_fraction", "energy_in_box", "pointing_hit",
]  # fmt: skip
Stats = namedtuple("Stats", STATS)


@pytest.fixture
def ctx(tmp_path) -> RowContext:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,id,label,group,x0,y0,x1,y1\n"
        "a.png,a,cat,g1,1,2,3,4\n"
        "b.png,b,zebra,g2,,,,\n"  # not a class: a warning
        "c.png,c,,g1,,,,\n"  # no label
    )
    table = read_manifest(manifest)
    return RowContext(table, [None, "label 'zebra' is not a class", None], NAMES, "gradcam")


def _batch(ranks: int, rng: np.random.Generator) -> BatchResult:
    """Three images: a and c load, b did not; with ranks > 1 every explanation has (B,K,...)."""
    b, k = 3, len(NAMES)
    topk_score = np.sort(rng.random((b, k)).astype(np.float32), axis=1)[:, ::-1]
    topk_index = np.stack([rng.permutation(k) for _ in range(b)]).astype(np.int32)
    pred = Predictions(topk_index, topk_score, topk_index[:, 0], topk_score[:, 0])
    shape = (b, ranks) if ranks > 1 else (b,)
    stats = Stats(*[rng.random(shape).astype(np.float32) for _ in STATS])
    stats = stats._replace(pointing_hit=np.where(rng.random(shape) > 0.5, 1.0, 0.0))
    exp = Explanation(
        target_index=(topk_index[:, :ranks] if ranks > 1 else topk_index[:, 0]),
        target_score=rng.random(shape).astype(np.float32),
        cam_max=rng.random(shape).astype(np.float32),
        map=rng.random((*shape, 4, 4)).astype(np.float32),
        map_input=rng.random((*shape, 8, 8)).astype(np.float32),
        stats=stats,
        guided=None,
    )
    return BatchResult(
        rows=np.array([0, 1, 2]),
        ok=np.array([True, False, True]),
        errors=[None, "cannot decode b.png: truncated", None],
        orig_hw=np.array([[40, 60], [0, 0], [30, 20]]),
        labels=np.array([0, -1, -1], np.int32),
        box_warnings=[None, None, None],
        out=StepOutputs(pred, exp),
        metrics={"deletion_auc": rng.random(shape).astype(np.float32)},
    )


def _files(n: int) -> FilePaths:
    return FilePaths([f"heatmaps/{i}.npy" for i in range(n)], [None] * n, [None] * n)


def test_rows_of_a_batch_follow_the_step_outputs_one_by_one(ctx):
    batch = expand_ranks(_batch(1, np.random.default_rng(0)), 1)
    table = batch_rows(batch, ctx, _files(3))
    assert table.schema.equals(SUMMARY_SCHEMA) and table.num_rows == 3
    rows = table.to_pylist()
    pred, exp = batch.out.predictions, batch.out.explanation
    for i in (0, 2):  # the ok rows: every value from the step, by hand
        r = rows[i]
        assert r["status"] == "ok" and r["error"] is None and r["rank"] == 0
        assert r["pred_index"] == pred.pred_index[i]
        assert r["pred_label"] == NAMES[pred.pred_index[i]]
        assert r["topk_index"] == pred.topk_index[i].tolist()
        assert r["target_label"] == NAMES[exp.target_index[i]]
        assert r["cam_max"] == pytest.approx(float(exp.cam_max[i]))
        for name in STATS[:-1]:
            assert r[name] == pytest.approx(float(getattr(exp.stats, name)[i])), name
        assert r["pointing_hit"] is bool(exp.stats.pointing_hit[i] > 0.5)
        assert r["deletion_auc"] == pytest.approx(float(batch.metrics["deletion_auc"][i]))
        assert (r["width"], r["height"]) == tuple(batch.orig_hw[i, ::-1])
        assert r["heatmap_path"] == f"heatmaps/{i}.npy" and r["cluster"] == -1
    assert rows[0]["correct"] is bool(pred.pred_index[0] == 0) and rows[2]["correct"] is None
    assert (rows[0]["label_index"], rows[2]["label_index"]) == (0, None)
    assert rows[0]["x0"] == 1.0 and rows[2]["x0"] is None
    assert rows[1]["warning"] == "label 'zebra' is not a class"
    error = rows[1]  # the error row: its message, and no prediction or statistic
    assert error["status"] == "error" and error["error"] == "cannot decode b.png: truncated"
    assert error["id"] == "b" and error["group"] == "g2" and error["label"] == "zebra"
    for name in ["pred_index", "pred_label", "topk_index", "target_index", "cam_max", *STATS]:
        assert error[name] is None, name


def _reference_rows(batch: BatchResult, ctx: RowContext, files: FilePaths) -> list[dict]:
    """The rows built one by one from the manifest and the step's arrays: the textbook way."""

    def value(x, keep=True):  # None where not kept or NaN
        x = x.item() if isinstance(x, np.generic) else x
        return None if not keep or (isinstance(x, float) and x != x) else x

    pred, exp, rows = batch.out.predictions, batch.out.explanation, []
    for i, r in enumerate(batch.rows):
        m, ok, label = ctx.table.iloc[r], bool(batch.ok[i]), int(batch.labels[i])
        stat = {f: value(getattr(exp.stats, f)[i], ok) for f in exp.stats._fields}
        hit = stat.pop("pointing_hit")
        warnings = [w for w in (ctx.label_warnings[r], batch.box_warnings[i]) if w]
        rows.append(
            {
                **{c: None for c in SUMMARY_SCHEMA.names},
                **{c: value(m[c]) for c in ("id", "label", "group", "x0", "y0", "x1", "y1")},
                "row": int(r), "path": m["manifest_path"], "status": "ok" if ok else "error",
                "method": ctx.method, "rank": int(batch.rank[i]),
                "error": None if ok else batch.errors[i],
                "warning": "; ".join(warnings) or None,
                "label_index": label if label >= 0 else None,
                "width": value(batch.orig_hw[i, 1], ok), "height": value(batch.orig_hw[i, 0], ok),
                "pred_index": value(pred.pred_index[i], ok),
                "pred_label": NAMES[pred.pred_index[i]] if ok else None,
                "pred_score": value(pred.pred_score[i], ok),
                "topk_index": [int(t) for t in pred.topk_index[i]] if ok else None,
                "topk_score": [value(t) for t in pred.topk_score[i]] if ok else None,
                "target_index": value(exp.target_index[i], ok),
                "target_label": NAMES[exp.target_index[i]] if ok else None,
                "target_score": value(exp.target_score[i], ok),
                "correct": bool(pred.pred_index[i] == label) if ok and label >= 0 else None,
                "heatmap_path": files.heatmap[i], "overlay_path": files.overlay[i],
                "cam_max": value(exp.cam_max[i], ok),
                **stat,
                "pointing_hit": None if hit is None else hit > 0.5,
                **{c: value(v[i], ok) for c, v in batch.metrics.items()},
                "cluster": -1,
            }
        )  # fmt: skip
    return rows


@pytest.mark.parametrize("ranks", [1, 3])
def test_rows_equal_the_rows_built_one_by_one(ctx, ranks):
    """Vectorised columns against the per-row reference, NaNs and error rows included."""
    batch = _batch(ranks, np.random.default_rng(3))
    exp, pred = batch.out.explanation, batch.out.predictions
    stats = exp.stats._replace(
        spread=np.where(np.arange(exp.stats.spread.size).reshape(exp.stats.spread.shape) % 2,
                        np.float32(np.nan), exp.stats.spread),
        pointing_hit=np.full(exp.stats.pointing_hit.shape, np.nan),
    )  # fmt: skip
    topk_score = pred.topk_score.copy()
    topk_score[0, 1] = np.nan
    pred = pred._replace(topk_score=topk_score, pred_score=topk_score[:, 0])
    batch = replace(
        batch,
        out=StepOutputs(pred, exp._replace(stats=stats)),
        box_warnings=[None, None, "box outside the image"],
    )
    expanded = expand_ranks(batch, ranks)
    files = _files(3 * ranks)
    table = batch_rows(expanded, ctx, files)
    assert table.schema.equals(SUMMARY_SCHEMA)
    assert table.to_pylist() == _reference_rows(expanded, ctx, files)
    assert table["spread"].null_count > 0 and table["topk_score"][0].as_py()[1] is None


def test_topk_expansion_gives_k_rows_per_image_in_rank_order(ctx):
    ranks = 3
    batch = _batch(ranks, np.random.default_rng(1))
    rows = batch_rows(expand_ranks(batch, ranks), ctx, _files(9)).to_pylist()
    assert len(rows) == 9
    exp, pred = batch.out.explanation, batch.out.predictions
    for j, r in enumerate(rows):
        i, k = divmod(j, ranks)  # image-major, rank-minor
        assert (r["row"], r["rank"], r["id"]) == (i, k, "abc"[i])
        assert r["status"] == ("error" if i == 1 else "ok")
        if i == 1:
            assert r["target_index"] is None and r["error"].startswith("cannot decode")
            continue
        assert r["target_index"] == exp.target_index[i, k] == pred.topk_index[i, k]
        assert r["pred_index"] == pred.pred_index[i]  # the same prediction on every rank
        assert r["topk_score"] == pytest.approx(pred.topk_score[i].tolist())
        assert r["border_fraction"] == pytest.approx(float(exp.stats.border_fraction[i, k]))
        assert r["deletion_auc"] == pytest.approx(float(batch.metrics["deletion_auc"][i, k]))
    expanded = expand_ranks(batch, ranks).out.explanation
    np.testing.assert_array_equal(expanded.map[4], exp.map[1, 1])


def test_target_label_without_a_label_becomes_an_error_row(ctx):
    batch = require_labels(_batch(1, np.random.default_rng(2)))
    rows = batch_rows(expand_ranks(batch, 1), ctx, _files(3)).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error"]
    assert rows[1]["error"] == "cannot decode b.png: truncated"  # its own error stays
    assert rows[2]["error"] == "target=label but the row has no usable label"


def test_summary_table_fills_defaults_and_nulls():
    table = summary_table({"row": [0, 1], "id": ["a", "b"]})
    assert table.schema.equals(SUMMARY_SCHEMA)
    assert table["cluster"].to_pylist() == [-1, -1] and table["path"].null_count == 2
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        summary_table({"row": ["not a number"]})
    with pytest.raises(KeyError, match="border_fractoin"):  # a misspelt column fails at once
        summary_table({"row": [0], "border_fractoin": [0.5]})


def test_error_kinds_drop_details_and_count():
    import pandas as pd

    errors = ["image not found (a.png)", "image not found (b.png)", None, "cannot decode: c.png"]
    assert error_kinds(pd.Series(errors)) == [("image not found", 2), ("cannot decode", 1)]


def test_summary_imports_no_tensorflow():
    code = "import sys, pipeline.summary; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
