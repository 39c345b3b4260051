"""The bias audit: aggregates against independent pandas group-bys, flags, groups, the report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.config import ReportConfig
from pipeline.outputs import save_heatmap, summary_table
from pipeline.report import build_audit, main

NAMES = ["cat", "dog", "bird", "fish"]
SIDE = 32


def _map_at(cx: float, cy: float, rng: np.random.Generator) -> np.ndarray:
    """A blob centred at (cx, cy) in [0,1] coordinates, plus a little noise; max 1."""
    ys, xs = (np.mgrid[:SIDE, :SIDE] + 0.5) / SIDE
    blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 0.06**2))
    blob = blob + rng.random((SIDE, SIDE)) * 0.05
    return (blob / blob.max()).astype(np.float32)


def _stats(m: np.ndarray, box: tuple[float, float, float, float]) -> dict[str, float]:
    ys, xs = (np.mgrid[:SIDE, :SIDE] + 0.5) / SIDE
    p = m / m.sum()
    peak = np.unravel_index(np.argmax(m), m.shape)
    inside = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
    border = (xs < 1 / 8) | (xs > 7 / 8) | (ys < 1 / 8) | (ys > 7 / 8)
    px, py = xs[peak], ys[peak]
    return {
        "cam_mean": m.mean(),
        "cam_entropy": float(-(p * np.log(p)).sum() / np.log(m.size)),
        "peak_x": px,
        "peak_y": py,
        "centroid_x": float((p * xs).sum()),
        "centroid_y": float((p * ys).sum()),
        "spread": 0.1,
        "coverage": float((m > 0.5).mean()),
        "border_fraction": float(p[border].sum()),
        "energy_in_box": float(p[inside].sum()),
        "pointing_hit": bool(box[0] <= px <= box[2] and box[1] <= py <= box[3]),
    }


@pytest.fixture
def synthetic_run(tmp_path) -> Path:
    """A finished run with known content: class 3 (fish) always looks at the top-left corner;
    in group g2, class 0 (cat) is right only 2 times in 6. Two error rows."""
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        cls = i % 4
        group = "g1" if i < 24 else "g2"
        x0, y0 = rng.uniform(0.2, 0.5, 2)
        box = (x0, y0, x0 + 0.3, y0 + 0.3)
        centre = (0.05, 0.05) if cls == 3 else (x0 + 0.15, y0 + 0.15)
        m = _map_at(*centre, rng)
        pred = cls
        if cls == 0 and group == "g2" and i % 3 != 0:
            pred = 1  # cat mistaken for dog in g2
        rel = f"heatmaps/{i:03d}.npy"
        save_heatmap(out / rel, m)
        rows.append(
            {
                "row": i,
                "id": f"img{i}",
                "path": f"img{i}.png",
                "status": "ok",
                "label": NAMES[cls],
                "label_index": cls,
                "group": group,
                "width": 100,
                "height": 100,
                "x0": box[0] * 100,
                "y0": box[1] * 100,
                "x1": box[2] * 100,
                "y1": box[3] * 100,
                "pred_index": pred,
                "pred_label": NAMES[pred],
                "pred_score": 0.5 + 0.01 * i,
                "topk_index": [pred],
                "topk_score": [0.9],
                "target_index": pred,
                "target_label": NAMES[pred],
                "target_score": 0.9,
                "correct": pred == cls,
                "heatmap_path": rel,
                "overlay_path": None,
                "cam_max": 2.0,
                **_stats(m, box),
            }
        )
    for j, cls in enumerate((0, 2)):
        rows.append(
            {
                "row": 48 + j,
                "id": f"bad{j}",
                "path": "x",
                "status": "error",
                "error": "file not found: x",
                "label": NAMES[cls],
                "label_index": cls,
            }
        )
    frame = pd.DataFrame(rows)
    pq.write_table(
        summary_table({c: frame[c].tolist() for c in frame.columns}), out / "summary.parquet"
    )
    record = {
        "model": {
            "class_names": NAMES,
            "input_size": [SIDE, SIDE],
            "source": "synthetic",
            "layer": "conv",
        },
        "config": {"report": {"examples": 3}},
    }
    (out / "run.json").write_text(json.dumps(record))
    return out


def test_class_table_matches_independent_groupby(synthetic_run):
    audit = build_audit(synthetic_run, ReportConfig())
    classes = audit.classes.set_index("class_index")
    assert classes["class"].tolist() == NAMES
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    by = ok.groupby("target_index")
    assert classes["n"].tolist() == by.size().reindex(range(4)).tolist()
    for col in ("energy_in_box", "border_fraction", "cam_entropy", "coverage"):
        np.testing.assert_allclose(classes[f"{col}_mean"], by[col].mean(), rtol=1e-6)
        np.testing.assert_allclose(classes[f"{col}_median"], by[col].median(), rtol=1e-6)
    np.testing.assert_allclose(
        classes["pointing_hit_mean"], by["pointing_hit"].apply(lambda s: s.astype(float).mean())
    )
    by_label = ok.groupby("label_index")  # accuracy is always by the true label
    np.testing.assert_allclose(
        classes["accuracy"], by_label["correct"].apply(lambda s: s.astype(float).mean())
    )
    assert classes.loc[0, "accuracy"] == pytest.approx(8 / 12)  # 4 of the g2 cats are "dogs"
    np.testing.assert_allclose(classes["pred_score_mean"], by["pred_score"].mean(), rtol=1e-6)
    spread = np.sqrt(by["peak_x"].var(ddof=0) + by["peak_y"].var(ddof=0))
    np.testing.assert_allclose(classes["peak_spread"], spread, atol=1e-6)
    assert classes["n_errors"].tolist() == [1, 0, 1, 0]
    # the mean map is the average of the class's maps
    fish = ok[ok["target_index"] == 3]["heatmap_path"]
    expected = np.mean([np.load(synthetic_run / p) for p in fish], axis=0)
    np.testing.assert_allclose(
        np.load(synthetic_run / classes.loc[3, "mean_map_path"]), expected, atol=1e-6
    )
    assert (synthetic_run / classes.loc[3, "mean_map_png"]).is_file()
    assert pd.read_parquet(synthetic_run / "classes.parquet").shape[0] == 4


def test_shortcut_class_is_flagged_with_reasons_and_examples(synthetic_run):
    audit = build_audit(synthetic_run, ReportConfig(examples=3))
    classes = audit.classes.set_index("class")
    assert classes["flagged"].tolist() == [False, False, False, True]
    reasons = " | ".join(classes.loc["fish", "flag_reasons"])
    assert "off the object" in reasons and "fixed in one place" in reasons
    assert "border" in reasons  # the corner is in the outer eighth
    assert len(classes.loc["fish", "examples"]) == 3
    assert classes.loc["cat", "examples"] == []
    # flags work without boxes too (border and fixed-location criteria)
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    summary[["energy_in_box", "pointing_hit"]] = None
    summary.to_parquet(synthetic_run / "summary.parquet")
    classes = build_audit(synthetic_run, ReportConfig()).classes.set_index("class")
    assert classes["flagged"].tolist() == [False, False, False, True]
    reasons = " | ".join(classes.loc["fish", "flag_reasons"])
    assert "fixed in one place" in reasons and "off the object" not in reasons


def test_group_by_label(synthetic_run):
    classes = build_audit(synthetic_run, ReportConfig(group_by="label")).classes
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    assert classes["n"].tolist() == ok.groupby("label_index").size().tolist() == [12] * 4


def test_groups_table_and_gap_flags(synthetic_run):
    groups = build_audit(synthetic_run, ReportConfig()).groups
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    ok = summary[summary["status"] == "ok"].assign(correct=lambda d: d["correct"].astype(float))
    n = ok.groupby(["target_index", "group"]).size()
    acc = ok.groupby(["label_index", "group"])["correct"].mean()
    got = groups.set_index(["class_index", "group"]).sort_index()
    assert got["n"].tolist() == n.tolist()
    np.testing.assert_allclose(got["accuracy"], acc)
    assert got.loc[(0, "g2"), "accuracy"] == pytest.approx(2 / 6)
    flagged = groups.drop_duplicates("class_index").set_index("class")["gap_flagged"]
    assert flagged["cat"] and not flagged["bird"] and not flagged["fish"]
    cat = groups[groups["class"] == "cat"].iloc[0]
    assert "accuracy gap" in cat["gap_reasons"][0] and cat["accuracy_gap"] > 0.1
    assert (synthetic_run / "groups.parquet").is_file()


def test_confusion_matches_crosstab(synthetic_run):
    confusion = build_audit(synthetic_run, ReportConfig()).confusion.set_index("label")
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    cross = pd.crosstab(ok["label"], ok["pred_label"]).reindex(
        index=NAMES, columns=NAMES, fill_value=0
    )
    np.testing.assert_array_equal(confusion.loc[NAMES, NAMES].to_numpy(), cross.to_numpy())
    assert confusion.loc["cat", "dog"] == 4
    on_disk = pd.read_parquet(synthetic_run / "confusion.parquet").set_index("label")
    assert on_disk.loc["cat", "cat"] == confusion.loc["cat", "cat"]


def test_report_html_links_resolve_and_survive_a_move(synthetic_run, tmp_path):
    build_audit(synthetic_run, ReportConfig())
    moved = tmp_path / "elsewhere"
    shutil.copytree(synthetic_run, moved)
    page = (moved / "report.html").read_text()
    sources = re.findall(r"<img src=['\"]([^'\"]+)['\"]", page)
    assert len(sources) >= 5  # mean maps of every class and the flagged class's strip
    for src in sources:
        assert not src.startswith(("/", "http")) and (moved / src).is_file(), src
    assert "fish" in page and "Flagged classes (1)" in page and "http" not in page


def test_report_command_rebuilds_without_tensorflow(synthetic_run):
    (synthetic_run / "classes.parquet").unlink(missing_ok=True)
    code = (
        "import sys; from pipeline.report import main; "
        f"main([{str(synthetic_run)!r}, 'report.group_by=label']); "
        "assert 'tensorflow' not in sys.modules, 'report imported tensorflow'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (synthetic_run / "classes.parquet").is_file() and (
        synthetic_run / "report.html"
    ).is_file()


def test_report_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2 and "no summary.parquet" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(synthetic_run, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    build_audit(synthetic_run, ReportConfig())
    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
    ]
    url = (synthetic_run / "report.html").as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-500:]
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body.group(0)))
    assert attrs.get("ready") == "1", body.group(0)
    assert int(attrs["images"]) >= 5 and attrs["broken"] == "0", body.group(0)
    assert "fish" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1400,2000", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000  # a real page, not a blank one
    # a broken link is caught
    (synthetic_run / audit_png(synthetic_run)).unlink()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', re.search(r"<body[^>]*>", dom.stdout)[0]))
    assert int(attrs["broken"]) >= 1


def audit_png(run: Path) -> str:
    return pd.read_parquet(run / "classes.parquet")["mean_map_png"].dropna().iloc[0]


def test_duplicate_and_reserved_class_names_and_many_classes(synthetic_run):
    """ImageNet has two 'crane's; a class may be called 'label'; 1000 classes stay readable."""
    record = json.loads((synthetic_run / "run.json").read_text())
    record["model"]["class_names"] = ["crane", "label", "crane", "fish"] + [
        f"c{i}" for i in range(60)
    ]
    (synthetic_run / "run.json").write_text(json.dumps(record))
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    summary.loc[summary.index[:45], "label_index"] = np.arange(4, 49, dtype=np.int32)  # many
    summary.to_parquet(synthetic_run / "summary.parquet")
    audit = build_audit(synthetic_run, ReportConfig())
    assert {"crane (0)", "crane (2)", "label (1)"} <= set(audit.classes["class"])
    confusion = pd.read_parquet(synthetic_run / "confusion.parquet")
    assert confusion.columns[0] == "label" and confusion.columns.is_unique
    page = (synthetic_run / "report.html").read_text()
    assert "Commonest confusions" in page and len(page) < 2_000_000


def test_examples_are_rows_even_with_duplicate_ids(synthetic_run):
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    summary["id"] = "same"  # every row shares one id
    summary.to_parquet(synthetic_run / "summary.parquet")
    classes = build_audit(synthetic_run, ReportConfig(examples=3)).classes.set_index("class")
    rows = classes.loc["fish", "examples"]
    assert len(rows) == 3 and all(summary.loc[r, "target_index"] == 3 for r in rows)
