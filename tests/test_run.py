"""run(cfg) end to end on a tiny model: one summary row per manifest row, outputs, run.json."""

from __future__ import annotations

import errno
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import N_CLASSES, SIZE, write_csv
from PIL import Image

from pipeline import load_heatmaps
from pipeline.errors import ConfigError
from pipeline.loop import BatchLoop
from pipeline.outputs import safe_name
from pipeline.run import run
from pipeline.summary import SUMMARY_SCHEMA

REQUIRED = (
    "id path status error label label_index pred_index pred_label pred_score topk_index "
    "topk_score target_index target_score correct heatmap_path overlay_path cam_max cam_mean "
    "cam_entropy peak_x peak_y centroid_x centroid_y spread coverage border_fraction "
    "energy_in_box pointing_hit"
).split()
CLASSES = [f"class_{i}" for i in range(N_CLASSES)]


@pytest.fixture
def audit(tmp_path, image_folder, model_files, make_cfg):
    """A 13-row manifest: good images (some with boxes/groups), three broken, odd labels."""
    good = image_folder(8, seed=4, size=(64, 48))
    broken = tmp_path / "images"
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "text.png").write_text("hello, not an image")
    (broken / "cut.jpg").write_bytes(_jpeg(good[0])[:200])
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    rows = [
        f"images/{good[0].name},a0,class_1,8,6,40,30,g1",
        f"images/{good[1].name},a1,2,,,,,g2",
        "images/empty.jpg,bad-empty,class_0,,,,,g1",
        f"images/{good[2].name},a2,class_3,0,0,64,48,g1",
        "images/text.png,bad-text,,,,,,",
        f"images/{good[3].name},a3,not_a_class,,,,,g2",
        f"images/{good[4].name},a4,,50,40,10,20,",  # x1 < x0: warning, no box stats
        "images/cut.jpg,bad-cut,class_2,,,,,",
        f"images/{good[5].name},a5,class_4,1,1,500,500,g1",  # box outside the image
        f"images/{good[6].name},../../escape,class_0,,,,,",  # hostile id
        f"images/{good[7].name},a7,class_1,,,,,",
        f"images/{good[7].name},a7,class_1,,,,,",  # duplicate row
        "images/missing.png,bad-missing-with-box,class_1,8,6,40,30,g1",
    ]
    manifest = write_csv(tmp_path / "m.csv", "path,id,label,x0,y0,x1,y1,group", rows)

    def go(*overrides: str):
        cfg = make_cfg(
            "model=custom",
            f"model.path={model_files['rgb']}",
            "model.preprocess=unit",
            f"model.class_names={names}",
            f"data.manifest={manifest}",
            "batch_size=5",
            *overrides,
        )
        return run(cfg)

    return go


def _jpeg(path) -> bytes:
    import io

    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_a_run_that_ends_early_closes_its_dataset_before_the_error_leaves(audit, monkeypatch):
    """Whatever ends the batch loop early (here an output error on its second batch; a stop
    signal takes the same way out), its tf.data generator is closed before run() ends. Left
    open, the exception's frames keep it in a cycle that only the interpreter's exit frees, and
    there its iterator's destructor waits forever for decoding calls the shutdown has ended
    (data.batches: EXIT)."""
    made, emitted = [], []
    dataset, emit = BatchLoop._dataset, BatchLoop._emit

    def recorded(self: BatchLoop, todo: list[int]):
        made.append(dataset(self, todo))
        return made[-1]

    def failing(self: BatchLoop, result, pool):
        emitted.append(result)
        if len(emitted) == 2:
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        return emit(self, result, pool)

    monkeypatch.setattr(BatchLoop, "_dataset", recorded)
    monkeypatch.setattr(BatchLoop, "_emit", failing)
    with pytest.raises(OSError, match="No space left"):
        audit("batch_size=2")  # 7 batches: the loop ends with batches still to come
    assert len(made) == 1 and made[0].gi_frame is None  # closed, its iterator released


def test_one_row_per_manifest_row_in_order_with_schema(audit):
    result = audit()
    out = result.output_dir
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == 13 and summary["row"].tolist() == list(range(13))
    assert summary["id"].tolist()[:3] == ["a0", "a1", "bad-empty"]
    assert set(REQUIRED) <= set(summary.columns)
    assert pq.read_schema(out / "summary.parquet").equals(SUMMARY_SCHEMA)
    schema = pq.read_schema(out / "summary.parquet")
    assert schema.field("topk_index").type == pa.list_(pa.int32())
    assert schema.field("pointing_hit").type == pa.bool_()
    status = summary.set_index("id")["status"]
    assert (status[["bad-empty", "bad-text", "bad-cut", "bad-missing-with-box"]] == "error").all()
    assert (summary["status"] == "ok").sum() == 9 and (result.ok, result.errors) == (9, 4)
    errors = summary.set_index("id")["error"]
    assert errors["bad-empty"] == "empty file (0 bytes)"
    assert errors["bad-text"] == "not a recognised image format"
    assert "truncated" in errors["bad-cut"]
    bad = summary[summary["status"] == "error"]
    assert bad["pred_index"].isna().all() and bad["heatmap_file"].isna().all()
    assert bad["heatmap_index"].isna().all() and bad["heatmap_path"].isna().all()
    assert bad["warning"].isna().all()  # no box warnings for images that never loaded


def test_predictions_labels_and_stats_columns(audit):
    summary = pd.read_parquet(audit().output_dir / "summary.parquet").set_index("id")
    ok = summary[summary["status"] == "ok"]
    assert ok["label_index"].to_dict()["a0"] == 1 and ok["label_index"].to_dict()["a1"] == 2
    assert pd.isna(ok.loc["a3", "label_index"]) and "not_a_class" in ok.loc["a3", "warning"]
    assert (ok["pred_label"] == [CLASSES[int(i)] for i in ok["pred_index"]]).all()
    assert (ok["target_index"] == ok["pred_index"]).all()  # target=pred by default
    labelled = ok[ok["label_index"].notna()]
    assert (labelled["correct"] == (labelled["pred_index"] == labelled["label_index"])).all()
    assert ok.loc["a3", "correct"] is None or pd.isna(ok.loc["a3", "correct"])
    for topk, scores, score in zip(ok["topk_index"], ok["topk_score"], ok["pred_score"]):
        assert len(topk) == N_CLASSES and scores[0] == pytest.approx(score)
        assert list(scores) == sorted(scores, reverse=True)
    assert np.allclose([sum(s) for s in ok["topk_score"]], 1.0, atol=1e-5)  # softmax outputs
    for col in ("peak_x", "centroid_y", "coverage", "border_fraction", "cam_entropy"):
        assert ok[col].between(0, 1).all(), col
    # boxes: valid ones give box stats, invalid ones a warning and nulls
    assert ok.loc["a2", "energy_in_box"] == pytest.approx(1.0)  # box = whole image
    assert not pd.isna(ok.loc["a0", "pointing_hit"])
    for key in ("a4", "a5"):
        assert pd.isna(ok.loc[key, "energy_in_box"]) and "box" in ok.loc[key, "warning"]
    assert pd.isna(ok.loc["a1", "energy_in_box"])  # no box at all: no warning either
    assert pd.isna(ok.loc["a1", "warning"])
    assert ok.loc["a0", "width"] == 64 and ok.loc["a0", "height"] == 48
    assert ok.loc["a0", "group"] == "g1"


def test_output_files_are_relative_unique_and_inside(audit):
    """heatmaps.format=files: one .npy per ok row, named by row and a safe form of the id."""
    result = audit("heatmaps.format=files")
    out = result.output_dir
    summary = pd.read_parquet(out / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    assert ok["heatmap_path"].is_unique and ok["overlay_path"].is_unique
    assert summary["heatmap_file"].isna().all() and summary["heatmap_index"].isna().all()
    for heat, overlay in zip(ok["heatmap_path"], ok["overlay_path"]):
        assert not heat.startswith("/") and (out / heat).resolve().is_relative_to(out.resolve())
        arr = np.load(out / heat)
        assert arr.shape == (SIZE // 2, SIZE // 2) and arr.dtype == np.float32
        assert arr.min() >= 0 and arr.max() <= 1 and arr.max() in (0.0, 1.0)
        image = Image.open(out / overlay)
        assert image.format == "JPEG" and image.size == (64, 48)
    assert len(list((out / "heatmaps").iterdir())) == 9
    assert not list(out.rglob("*.tmp"))
    escape = summary.set_index("id").loc["../../escape", "heatmap_path"]
    assert escape == f"heatmaps/{safe_name(9, '../../escape')}.npy" and ".." not in escape


def test_chunk_format_stores_each_chunks_maps_in_one_file(audit, tmp_path):
    """The default: one float16 (N,h,w) array per chunk; rows point into it; load_heatmaps
    reads the same maps as the files format writes (to float16's 5e-4)."""
    files_out = audit("heatmaps.format=files").output_dir.rename(tmp_path / "files")
    out = audit("chunk_batches=1").output_dir  # 13 rows, batches of 5: three chunks
    summary = pd.read_parquet(out / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    assert summary["heatmap_path"].isna().all()
    files = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert files == ["chunk-000000.npy", "chunk-000001.npy", "chunk-000002.npy"]
    assert set(ok["heatmap_file"]) == {f"heatmaps/{f}" for f in files}
    assert (ok["heatmap_index"] == ok["row"] % 5).all()  # the row's place in its chunk
    chunk = np.load(out / "heatmaps" / files[2])
    assert chunk.shape == (3, SIZE // 2, SIZE // 2) and chunk.dtype == np.float16
    mine, theirs = load_heatmaps(out), load_heatmaps(files_out)
    assert len(mine) == len(theirs) == 13
    for status, a, b in zip(summary["status"], mine, theirs):
        if status != "ok":
            assert a is None and b is None
            continue
        assert a.dtype == np.float16 and b.dtype == np.float32
        np.testing.assert_allclose(a.astype(np.float32), b, atol=5e-4, rtol=0)
    picked = load_heatmaps(out, [12, 0])  # any selection, in the order asked
    np.testing.assert_array_equal(picked[0], mine[12])
    assert picked[1] is None or np.array_equal(picked[1], mine[0])


def test_run_json_records_counts_versions_hashes(audit, model_files):
    import hashlib

    out = audit().output_dir
    record = json.loads((out / "run.json").read_text())
    assert record["counts"] == {"rows": 13, "ok": 9, "errors": 4}
    assert record["timing"]["images_per_second"] > 0
    assert record["timing"]["steady_images_per_second"] > 0  # the 7 rows after the first batch
    assert record["model"]["class_names"] == CLASSES
    assert record["model"]["sha256"] == hashlib.sha256(model_files["rgb"].read_bytes()).hexdigest()
    assert len(record["manifest"]["sha256"]) == 64
    assert {"python", "tensorflow", "keras", "numpy"} <= set(record["versions"])
    assert record["config"]["batch_size"] == 5 and record["model"]["layer"] == "last_conv"


def test_input_resolution_and_no_overlays(audit):
    out = audit("heatmaps.resolution=input", "overlays.enabled=false").output_dir
    summary = pd.read_parquet(out / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    assert load_heatmaps(out, ok.head(1))[0].shape == (SIZE, SIZE)
    assert summary["overlay_path"].isna().all() and not (out / "overlays").exists()


def test_target_label_without_label_is_an_error_row(audit):
    summary = pd.read_parquet(audit("target=label").output_dir / "summary.parquet")
    by_id = summary.set_index("id")
    assert by_id.loc["a4", "status"] == "error"
    assert by_id.loc["a4", "error"] == "target=label but the row has no usable label"
    ok = summary[summary["status"] == "ok"]
    assert (ok["target_index"] == ok["label_index"]).all()
    assert len(summary) == 13


@pytest.mark.parametrize(
    "override,message",
    [
        ("target=99", "out of range"),
        ("target=best", "expected pred, label"),
        ("heatmaps.resolution=full", "heatmaps.resolution"),
        ("batch_size=0", "batch_size"),
        ("model.layer=gap", "4-D"),
        ("report.group_by=labels", "report.group_by"),
        ("max_error_rate=2", "max_error_rate"),
        ("stats.pointing_tolerance=-1", "stats.pointing_tolerance=-1.0; expected a value >= 0"),
        ("shard.index=1", "shard.index=1 with shard.count=1"),
        ("strategies.max_clusters=0", "strategies.max_clusters=0; expected an integer >= 1"),
        ("strategies.min_class_n=2", "strategies.min_class_n=2; expected an integer >= 3"),
        ("strategies.fixed_share=1.5", r"strategies.fixed_share=1.5; expected a value in \[0, 1\]"),
    ],
)
def test_bad_values_fail_before_any_work(audit, override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        audit(override)
    assert not (tmp_path / "out").exists()  # nothing was started


def test_pointing_hit_follows_the_tolerance_in_original_pixels(
    tmp_path, image_folder, model_files, make_cfg
):
    """64x48 images, each with a small box at a set distance (original pixels) from its map's
    peak, along x or y: the pointing column follows stats.pointing_tolerance (default 15)."""
    paths = image_folder(8, seed=7, size=(64, 48))
    audit = ["model=custom", f"model.path={model_files['rgb']}", "model.preprocess=unit"]
    audit += ["report.enabled=false", "overlays.enabled=false", "heatmaps.enabled=false"]

    def summary(manifest, name, *overrides):
        cfg = make_cfg(*audit, f"data.manifest={manifest}", *overrides)
        return cfg, pd.read_parquet(run(cfg, tmp_path / name).output_dir / "summary.parquet")

    plain = write_csv(tmp_path / "plain.csv", "path", [f"images/{p.name}" for p in paths])
    peaks = summary(plain, "peaks")[1]
    x, y = peaks["peak_x"] * 64, peaks["peak_y"] * 48  # the peaks in original pixels
    # (axis, distance): a 2x2 px box that far from the peak, on the side towards the centre;
    # 18 px along x and 13 px along y tell a tolerance normalised by the wrong side (20, 11 px)
    offsets = [("x", 0), ("x", 10), ("x", 18), ("y", 10), ("y", 13), ("y", 18), ("x", 30)]
    offsets.append(("y", 0))
    rows = []
    for path, px, py, (axis, d) in zip(paths, x, y, offsets):
        sx, sy = (1 if px < 32 else -1, 0) if axis == "x" else (0, 1 if py < 24 else -1)
        cx, cy = px + sx * (d + 1), py + sy * (d + 1)  # box centre: its near edge d px away
        rows.append(f"images/{path.name},{cx - 1},{cy - 1},{cx + 1},{cy + 1}")
    boxed = write_csv(tmp_path / "boxed.csv", "path,x0,y0,x1,y1", rows)
    distance = np.array([d for _, d in offsets])
    for tolerance in (None, 0, 12, 1000):
        overrides = [] if tolerance is None else [f"stats.pointing_tolerance={tolerance}"]
        cfg, s = summary(boxed, f"out{tolerance}", *overrides)
        assert cfg.stats.pointing_tolerance == (15.0 if tolerance is None else tolerance)
        np.testing.assert_array_equal(s[["peak_x", "peak_y"]], peaks[["peak_x", "peak_y"]])
        expected = distance <= cfg.stats.pointing_tolerance
        np.testing.assert_array_equal(s["pointing_hit"].astype(bool), expected, str(tolerance))
