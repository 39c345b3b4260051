"""Comparing two audits: rows joined, maps on a common grid, class drift and its reasons, the
files, the command and its errors, compare.html in a browser, and a planted shortcut removed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import custom_model, noise_pngs, write_csv
from test_report import SIDE, _box, _ok_row, _on, _write_run
from test_shortcut import planted_case

from pipeline import load_heatmaps
from pipeline.cli.compare import main
from pipeline.compare import CompareConfig, compare_runs, default_output_dir
from pipeline.compare.build import ROW_COLUMNS
from pipeline.compare.rows import cosine
from pipeline.config import ReportConfig, StrategiesConfig
from pipeline.demo import Shortcut
from pipeline.outputs import resize_map, save_heatmap
from pipeline.report import build_audit
from pipeline.run import run
from pipeline.shards import merge_and_report

CLASS_COLUMNS = [
    "class", "n_compared", "n_a_only", "n_b_only", "n_errors_a", "n_errors_b", "n_pred_changed",
    "accuracy_a", "accuracy_b", "similarity_mean", "similarity_median", "mean_map_similarity",
    "peak_shift_median", "border_fraction_a", "border_fraction_b", "energy_in_box_a",
    "energy_in_box_b", "peak_spread_a", "peak_spread_b", "cam_entropy_change",
    "coverage_change", "spread_change", "cam_mean_change", "cam_max_change", "pointing_rate_a",
    "pointing_rate_b", "centroid_shift_median", "accuracy_change", "border_fraction_change",
    "energy_in_box_change", "peak_spread_change", "pointing_rate_change", "moved_from",
    "moved_to", "moved_share_a", "moved_share_b",
    "drift_map", "drift_region", "drift_peaks", "drift_accuracy", "drift", "drift_flagged",
    "drift_reasons", "flagged_a", "flagged_b", "flag_reasons_a", "flag_reasons_b",
    "flag_change", "clusters_a", "clusters_b", "clusters_appeared", "clusters_vanished",
    "mean_map_png_a", "mean_map_png_b",
]  # fmt: skip


def synthetic(out: Path, seed: int, border_class: int | None = None, n: int = 96) -> Path:
    """A finished run of n rows (4 classes, boxes, every row with an overlay) whose maps sit on
    the object; with border_class, that class's maps sit on the left edge instead."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = i % 4
        box = _box(rng)
        centre = (0.04, 0.5) if cls == border_class else _on(box)
        rows.append(_ok_row(out, i, cls, cls, box, centre, rng, overlay=True))
    return _write_run(out, rows)


def _audited(out: Path) -> Path:
    """The run's own audit (classes.parquet flags, clusters.parquet, the summary's cluster)."""
    build_audit(out, ReportConfig(), StrategiesConfig(min_class_n=20))
    return out


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """Run A: every class looks at its object. Run B: the same images (other noise), but class
    2 (bird) now looks at the left edge."""
    a = _audited(synthetic(tmp_path / "a", 0))
    b = _audited(synthetic(tmp_path / "b", 0, border_class=2))
    return a, b


# ----------------------------------------------------------------------------- measures


def test_cosine_is_scale_free_and_handles_empty_maps():
    rng = np.random.default_rng(0)
    m = rng.random((3, 8, 8))
    np.testing.assert_allclose(cosine(m, 0.2 * m), 1.0)
    zero = np.zeros((1, 8, 8))
    assert cosine(zero, zero)[0] == 1.0  # both attend to nothing: alike
    assert cosine(zero, m[:1])[0] == 0.0  # one attends to nothing: like nothing
    left, right = np.zeros((1, 8, 8)), np.zeros((1, 8, 8))
    left[0, :, :2], right[0, :, 6:] = 1, 1
    assert cosine(left, right)[0] == 0.0


def test_a_map_and_its_upsampled_copy_are_alike(tmp_path):
    """Run A stores 8x8 maps, run B the same maps upsampled to 32x32 (as heatmaps.resolution=
    input would): every row compares, with a similarity of ~1, and nothing drifts."""
    a = synthetic(tmp_path / "a", 3)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    summary = pd.read_parquet(a / "summary.parquet")
    for rel in summary["heatmap_path"]:
        coarse = resize_map(np.load(a / rel), (8, 8))
        save_heatmap(a / rel, coarse)
        save_heatmap(b / rel, np.clip(resize_map(coarse, (SIDE, SIDE)), 0, 1))
    assert np.load(a / rel).shape == (8, 8) and np.load(b / rel).shape == (SIDE, SIDE)
    result = compare_runs(a, b, tmp_path / "cmp")
    assert result.rows["compared"].all()
    assert result.rows["similarity"].min() > 0.99, result.rows["similarity"].describe()
    assert not result.classes["drift_flagged"].any()
    assert result.classes["mean_map_similarity"].min() > 0.995


# ----------------------------------------------------------------------------- files


def test_a_run_compared_with_itself_has_zero_drift(pair, tmp_path):
    a, _ = pair
    result = compare_runs(a, a, tmp_path / "self")
    rows, classes = result.rows, result.classes
    assert list(rows.columns) == list(ROW_COLUMNS)
    assert list(classes.columns) == CLASS_COLUMNS
    assert len(rows) == 96 and (rows["side"] == "both").all() and rows["compared"].all()
    assert (rows["similarity"] == 1.0).all()
    changes = [c for c in rows.columns if c.endswith(("_change", "_shift"))]
    assert (rows[changes].abs().max() == 0).all(), rows[changes].abs().max()
    assert not rows["pred_changed"].any() and not rows["cluster_changed"].any()
    assert (rows["cluster_a"] >= 0).all()  # the clusters were compared, and all matched
    assert (classes["drift"] == 0).all() and not classes["drift_flagged"].any()
    assert (classes["mean_map_similarity"] == 1.0).all()
    class_changes = classes.filter(regex="(_change|_shift_median)$").select_dtypes("number")
    assert len(class_changes.columns) == 12 and (class_changes.abs().max() == 0).all()
    assert classes["pointing_rate_a"].between(0, 1).all()  # every row has a box here
    assert classes["drift_reasons"].map(len).eq(0).all()
    assert (classes["flag_change"] == "").all() and classes["flagged_a"].equals(
        classes["flagged_b"]
    )
    assert classes["clusters_appeared"].map(len).eq(0).all()
    assert classes["clusters_vanished"].map(len).eq(0).all()
    record = json.loads((result.output_dir / "compare.json").read_text())
    assert record["differences"] == {}
    counts = record["counts"]
    assert (counts["matched"], counts["a_only"], counts["b_only"], counts["compared"]) == (
        96, 0, 0, 96,
    )  # fmt: skip
    assert counts["drift_flagged"] == 0 and record["drift_flagged"] == []
    on_disk = pd.read_parquet(result.output_dir / "compare.parquet")
    pd.testing.assert_frame_equal(on_disk, rows, check_dtype=False)


def test_attention_moved_to_the_border_is_flagged_in_words(pair, tmp_path):
    a, b = pair
    result = compare_runs(a, b, tmp_path / "cmp")
    classes = result.classes.set_index("class")
    assert classes.index[classes["drift_flagged"]].tolist() == ["bird"], classes["drift"]
    reasons = classes.loc["bird", "drift_reasons"]
    assert reasons[0].startswith("attention moved from the object to the left edge: "), reasons
    assert re.search(r"\d+% of the map in the left eighth vs \d+% before", reasons[0])
    assert classes.loc["bird", "moved_to"] == "the left edge"
    assert classes.loc["bird", "border_fraction_b"] > classes.loc["bird", "border_fraction_a"]
    # the pointing game: B's bird peaks sit on the edge, off the object box
    assert classes.loc["bird", "pointing_rate_change"] < -0.5
    assert classes.loc["bird", "centroid_shift_median"] > 0.1
    assert classes.loc["bird", "flag_change"] == "gained"  # B's own audit flags it
    assert classes.loc["bird", "drift"] > 2 > 0.5 > classes.drop("bird")["drift"].max()
    rows = result.rows
    birds = rows[rows["class"] == "bird"]
    assert birds["similarity"].max() < 0.2 < rows.loc[rows["class"] != "bird", "similarity"].min()
    record = json.loads((result.output_dir / "compare.json").read_text())
    assert record["drift_flagged"] == ["bird"]


def test_rows_in_one_run_error_rows_and_duplicate_ids(tmp_path):
    """A has rows img0..img11 and an error row; B lacks img0/img1, has img12, turns img5 into an
    error, and holds img3 twice: the n-th row of an id matches the n-th row of that id."""
    rng = np.random.default_rng(0)
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    for out in (a_out, b_out):
        out.mkdir()
    a_rows = [
        _ok_row(a_out, i, i % 4, i % 4, (0.2, 0.2, 0.6, 0.6), (0.4, 0.4), rng) for i in range(12)
    ]
    a_rows.append(
        {"row": 12, "id": "bad", "path": "x", "status": "error", "error": "file not found: x"}
    )
    b_rows = [
        _ok_row(b_out, i, i % 4, i % 4, (0.2, 0.2, 0.6, 0.6), (0.4, 0.4), rng) for i in range(2, 13)
    ]
    b_rows[3] = {
        "row": 5,
        "id": "img5",
        "path": "img5.png",
        "status": "error",
        "error": "truncated",
    }
    dup = _ok_row(b_out, 13, 3, 3, (0.2, 0.2, 0.6, 0.6), (0.4, 0.4), rng)
    b_rows.append({**dup, "id": "img3"})
    _write_run(a_out, a_rows)
    _write_run(b_out, b_rows)
    result = compare_runs(a_out, b_out, tmp_path / "cmp")
    rows = result.rows.set_index(["id", "occurrence"])
    assert rows["side"].value_counts().to_dict() == {"both": 10, "a_only": 3, "b_only": 2}
    assert rows.loc[[("img0", 0), ("img1", 0), ("bad", 0)], "side"].eq("a_only").all()
    assert rows.loc[[("img12", 0), ("img3", 1)], "side"].eq("b_only").all()
    assert rows.loc[("bad", 0), "status_a"] == "error" and pd.isna(rows.loc[("bad", 0), "status_b"])
    five = rows.loc[("img5", 0)]
    assert (five["side"], five["status_a"], five["status_b"]) == ("both", "ok", "error")
    assert not five["compared"] and pd.isna(five["similarity"]) and five["error_b"] == "truncated"
    assert pd.isna(five["pred_changed"]) and pd.isna(five["border_fraction_change"])
    assert rows["compared"].sum() == 9 and rows.loc[rows["compared"], "similarity"].notna().all()
    assert rows.loc[("img3", 0), "row_b"] == 3 and rows.loc[("img3", 1), "row_b"] == 13
    counts = result.record["counts"]
    assert (counts["matched"], counts["a_only"], counts["b_only"]) == (10, 3, 2)
    assert (counts["errors_a"], counts["errors_b"], counts["matched_with_an_error"]) == (1, 1, 1)
    classes = result.classes.set_index("class")
    assert classes["n_compared"].sum() == 9 and classes.loc["dog", "n_errors_b"] == 1
    page = (result.output_dir / "compare.html").read_text()
    assert "only in A (3): img0, img1, bad" in page and "only in B (2): img12, img3" in page


def test_topk_rows_join_on_id_and_rank(tmp_path):
    """A explained the top 2 classes of every image (rank 0 and 1), B only the prediction: the
    rank-0 rows match, the rank-1 rows are A's only; classes use rank 0."""
    rng = np.random.default_rng(0)
    a_out, b_out = tmp_path / "a", tmp_path / "b"
    a_rows, b_rows = [], []
    for i in range(8):
        box = _box(rng)
        for rank in (0, 1):
            row = _ok_row(a_out, 2 * i + rank, i % 4, i % 4, box, _on(box), rng)
            a_rows.append({**row, "row": i, "id": f"img{i}", "rank": rank})
        b_rows.append({**_ok_row(b_out, i, i % 4, i % 4, box, _on(box), rng), "rank": 0})
    _write_run(a_out, a_rows)
    _write_run(b_out, b_rows)
    rows = compare_runs(a_out, b_out, tmp_path / "cmp").rows
    assert len(rows) == 16
    sides = rows.groupby("rank")["side"].unique().map(list).to_dict()
    assert sides == {0: ["both"], 1: ["a_only"]}
    assert rows.loc[rows["rank"] == 0, "similarity"].gt(0.9).all()
    assert rows[["id", "rank"]].head(2).values.tolist() == [["img0", 0], ["img0", 1]]


def test_pictures_are_copied_or_rendered_and_links_survive_a_move(pair, tmp_path):
    a, b = pair
    summary = pd.read_parquet(b / "summary.parquet")
    summary["overlay_path"] = None  # B has no overlays: its maps are drawn (images are gone)
    summary.to_parquet(b / "summary.parquet")
    out = compare_runs(a, b, tmp_path / "cmp", CompareConfig(rows_shown=5)).output_dir
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    page = (moved / "compare.html").read_text()
    sources = re.findall(r"<img src=['\"]([^'\"]+)['\"]", page)
    assert len(sources) == 2 * 5 + 2 * 4  # two pictures per shown row, two mean maps a class
    for src in sources:
        assert not src.startswith(("/", "http", "..")) and (moved / src).is_file(), src
    assert "http" not in page and page.count("A: overlay<") == 5
    assert page.count("B: the map alone (the image no longer loads)<") == 5
    assert page.index("What differs") < page.index("Classes that changed") < page.index("Rows")


def test_default_output_dir_and_compare_json_differences(pair):
    a, b = pair
    record = json.loads((a / "run.json").read_text())
    record["model"]["layer"] = "conv2"
    record["versions"] = {"keras": "3.0"}
    (a / "run.json").write_text(json.dumps(record))
    result = compare_runs(a, b)
    assert result.output_dir == b / "compare-vs-a" == default_output_dir(a, b)
    saved = json.loads((result.output_dir / "compare.json").read_text())
    assert saved["differences"] == {
        "model.layer": ["conv2", "conv"],
        "versions.keras": ["3.0", None],
    }
    assert saved["similarity"] == "cosine" and saved["grid"] == 32 and saved["group_by"] == "label"
    for name in ("compare.parquet", "compare_classes.parquet", "compare.html"):
        assert (result.output_dir / name).is_file()


# ----------------------------------------------------------------------------- command


def test_command_errors_are_one_line_with_exit_code_2(pair, tmp_path, capsys):
    a, b = pair
    other = synthetic(tmp_path / "other", 1, n=8)
    summary = pd.read_parquet(other / "summary.parquet")
    summary["id"] = "x" + summary["id"]
    summary.to_parquet(other / "summary.parquet")
    cases = [
        ([str(tmp_path), str(b)], "has no summary.parquet: is it a gradcam-audit output?"),
        ([str(tmp_path / "nowhere"), str(b)], "is not a folder"),
        ([str(a), str(other)], "no row ids in common between"),
        ([str(a), str(b), "grid=2"], "grid=2; expected an integer >= 4"),
        ([str(a), str(b), "map_change=0"], "map_change=0.0; expected a value > 0"),
        ([str(a), str(b), "grid=many"], "bad setting: Value 'many'"),
        ([str(a), str(b), "thresold=1"], "unknown setting 'thresold=1'"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("gradcam-audit-compare: error: "), err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (b / "compare-vs-a").exists()


def test_command_runs_without_tensorflow(pair, tmp_path):
    a, b = pair
    out = tmp_path / "cmp"
    script = textwrap.dedent(f"""
        import sys
        from pipeline.cli.compare import main
        main([{str(a)!r}, {str(b)!r}, "output_dir={out}", "rows_shown=3"])
        print("tensorflow loaded:", "tensorflow" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("tensorflow loaded: False"), proc.stdout
    assert "1 of 4 classes drift-flagged" in proc.stdout
    assert (out / "compare.html").is_file() and (out / "compare.parquet").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_compare_html_renders_in_headless_chromium(pair, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    a, b = pair
    out = compare_runs(a, b, tmp_path / "cmp").output_dir
    page = out / "compare.html"
    n_img = page.read_text().count("<img ")
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--allow-file-access-from-files", "--virtual-time-budget=5000"]  # fmt: skip

    def body_attrs() -> dict[str, str]:
        dom = subprocess.run(
            [*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
        )
        body = re.search(r"<body[^>]*>", dom.stdout)
        assert body, dom.stderr[-500:]
        assert "bird" in dom.stdout and 'id="compare-class-table"' in dom.stdout
        return dict(re.findall(r'data-([a-z]+)="([^"]*)"', body.group(0)))

    attrs = body_attrs()
    assert attrs.get("ready") == "1", attrs
    assert int(attrs["images"]) == n_img >= 10 and attrs["broken"] == "0", attrs
    shot = tmp_path / "compare.png"
    subprocess.run([*args, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 20_000
    next((out / "rows").rglob("*.*")).unlink()  # a broken link is caught
    assert int(body_attrs()["broken"]) >= 1


# ----------------------------------------------------------------------------- real runs


def _tiny(model_files, manifest, out: Path, *extra: str) -> tuple[list[str], Path]:
    """Overrides that audit the manifest with the tiny fixture model, and the output folder."""
    args = [*custom_model(model_files["rgb"], manifest), "batch_size=4", "chunk_batches=1"]
    args += ["progress=false", "max_error_rate=0.5", "strategies.min_class_n=3", *extra]
    return args, out


@pytest.fixture
def images(tmp_path) -> Path:
    """16 rows: 15 noise PNGs with labels, one missing file."""
    noise_pngs(tmp_path / "img", 15, seed=3)
    lines = [f"img/{i}.png,{i % 5}" for i in range(15)]
    lines.insert(6, "img/gone.png,1")
    return write_csv(tmp_path / "m.csv", "path,label", lines)


def test_runs_at_different_layers_and_resolutions_compare(model_files, images, make_cfg, tmp_path):
    """conv1 (32x32 maps) against last_conv (16x16): every ok row compares. The same layer at
    heatmaps.resolution=input (its maps upsampled to 32x32) is ~1 like its layer-grid run."""
    runs = {}
    for name, extra in {
        "last": [],
        "first": ["model.layer=conv1"],
        "input": ["heatmaps.resolution=input"],
    }.items():
        args, out = _tiny(model_files, images, tmp_path / name, *extra)
        runs[name] = run(make_cfg(*args), out).output_dir
    shapes = {n: next(m for m in load_heatmaps(o) if m is not None).shape for n, o in runs.items()}
    assert shapes == {"last": (16, 16), "first": (32, 32), "input": (32, 32)}
    layers = compare_runs(runs["last"], runs["first"], tmp_path / "layers")
    assert layers.record["differences"]["model.layer"] == ["last_conv", "conv1"]
    assert layers.rows["compared"].sum() == 15 and layers.rows["similarity"].notna().sum() == 15
    gone = layers.rows[layers.rows["path"] == "img/gone.png"].iloc[0]
    assert (gone["status_a"], gone["status_b"], gone["compared"]) == ("error", "error", False)
    same = compare_runs(runs["last"], runs["input"], tmp_path / "resolution")
    assert same.rows["similarity"].dropna().min() > 0.98, same.rows["similarity"].describe()
    assert not same.classes["drift_flagged"].any()


def test_merged_sharded_run_compares_like_one_process(model_files, images, make_cfg, tmp_path):
    args, single = _tiny(model_files, images, tmp_path / "single", "overlays.enabled=false")
    run(make_cfg(*args), single)
    sharded = tmp_path / "sharded"
    for index in (0, 1):
        run(make_cfg(*args, "shard.count=2", f"shard.index={index}"), sharded)
    merge_and_report(sharded)  # as the Hydra callback does: merged, then audited
    result = compare_runs(single, sharded, tmp_path / "cmp", CompareConfig(rows_shown=2))
    rows = result.rows
    assert len(rows) == 16 and (rows["side"] == "both").all()
    assert rows["compared"].sum() == 15 and (rows["similarity"].dropna() == 1.0).all()
    assert (rows.loc[~rows["compared"], ["status_a", "status_b"]] == "error").all().all()
    classes = result.classes
    assert (classes["drift"] == 0).all() and not classes["drift_flagged"].any()
    assert (classes["flag_change"] == "").all() and not rows["cluster_changed"].any()
    assert classes["clusters_vanished"].map(len).eq(0).all() and classes["clusters_a"].sum() > 0
    page = (result.output_dir / "compare.html").read_text()
    assert page.count("overlay rendered from the stored map</figcaption>") == 4  # none drawn


# ----------------------------------------------------------------------------- planted


@pytest.mark.slow
def test_removing_a_planted_shortcut_is_the_only_drift(make_cfg, tmp_path):
    """Two demo CNNs trained on the same kind of data, one where every square carries a patch
    in the top-left corner: both audit the same (tagged) images. Comparing them flags square
    alone, with where its attention went, in both directions."""
    outs = {}
    manifest = None
    for name, shortcut in (("shortcut", Shortcut("square", 1.0, "patch", "tl", faint=False)),
                           ("clean", None)):  # fmt: skip
        (tmp_path / name).mkdir()
        made = planted_case(tmp_path / name, 3, shortcut)
        manifest = manifest or made  # the tagged audit set, for both models
        cfg = make_cfg(
            *custom_model(tmp_path / name / "model.keras", manifest),
            f"model.class_names={tmp_path / name / 'classes.txt'}",
            "overlays.select=report",
        )
        outs[name] = run(cfg, tmp_path / f"out-{name}").output_dir
    fixed = compare_runs(outs["shortcut"], outs["clean"], tmp_path / "fixed")
    classes = fixed.classes.set_index("class")
    assert classes.index[classes["drift_flagged"]].tolist() == ["square"], classes["drift"]
    reasons = classes.loc["square", "drift_reasons"]
    assert reasons[0].startswith("attention moved from the top-left corner to the centre: ")
    assert classes.loc["square", "drift"] >= 2 * classes.drop("square")["drift"].max()
    back = compare_runs(outs["clean"], outs["shortcut"], tmp_path / "planted").classes
    back = back.set_index("class")
    assert back.index[back["drift_flagged"]].tolist() == ["square"]
    # the planted model really used the tag: most of its square maps sit in that corner
    assert back.loc["square", "moved_to"] == "the top-left corner"
    assert back.loc["square", "moved_share_b"] >= 0.5
    words = back.loc["square", "drift_reasons"][0]
    match = re.match(
        r"attention moved from the centre to the top-left corner: (\d+)% of the map in the "
        r"top-left corner \(outer quarter\) vs (\d+)% before",
        words,
    )
    assert match and int(match[1]) >= 50 and int(match[2]) <= 35, words
