"""The bias audit: aggregates against independent pandas group-bys, flags, groups, the report."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.report import main
from pipeline.config import ReportConfig, StrategiesConfig
from pipeline.outputs import save_heatmap
from pipeline.report import build_audit
from pipeline.report import html as report_html
from pipeline.summary import summary_table

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


def _ok_row(out: Path, i: int, cls: int, pred: int, box, centre, rng, group="g1", overlay=False):
    """One ok summary row whose saved map is a blob at `centre` (and, if asked, an overlay)."""
    m = _map_at(*centre, rng)
    rel = f"heatmaps/{i:03d}.npy"
    save_heatmap(out / rel, m)
    overlay_rel = None
    if overlay:
        overlay_rel = f"overlays/{i:03d}.png"
        (out / "overlays").mkdir(parents=True, exist_ok=True)
        Image.fromarray((m * 255).astype(np.uint8)).convert("RGB").save(out / overlay_rel)
    return {
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
        "pred_score": 0.5 + 0.001 * i,
        "topk_index": [pred],
        "topk_score": [0.9],
        "target_index": pred,
        "target_label": NAMES[pred],
        "target_score": 0.9,
        "correct": pred == cls,
        "heatmap_path": rel,
        "overlay_path": overlay_rel,
        "cam_max": 2.0,
        **_stats(m, box),
    }


def _write_run(out: Path, rows: list[dict]) -> Path:
    """summary.parquet and run.json of a finished run made of these rows."""
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


def _box(rng: np.random.Generator) -> tuple[float, float, float, float]:
    x0, y0 = rng.uniform(0.2, 0.5, 2)
    return (x0, y0, x0 + 0.3, y0 + 0.3)


def _on(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


@pytest.fixture
def synthetic_run(tmp_path) -> Path:
    """A finished run with known content: class 3 (fish) always looks at the top-left corner;
    in group g2, class 0 (cat) is right only 2 times in 6. Two error rows. Too few rows per
    class for strategies (12 < strategies.min_class_n)."""
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        cls = i % 4
        group = "g1" if i < 24 else "g2"
        box = _box(rng)
        centre = (0.05, 0.05) if cls == 3 else _on(box)
        pred = 1 if cls == 0 and group == "g2" and i % 3 != 0 else cls  # cat mistaken for dog
        rows.append(_ok_row(out, i, cls, pred, box, centre, rng, group))
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
    return _write_run(out, rows)


@pytest.fixture
def strategy_run(tmp_path) -> Path:
    """36 rows per class (enough to cluster), every row with an overlay. cat and dog look at
    the object; bird looks at the top-left corner in every image (the class is flagged); fish
    looks at the object in half its images and at a fixed spot in the top-right corner in the
    other half (rows 7, 15, ...): a second strategy, a flagged cluster in a class whose
    statistics alone would not flag it."""
    out = tmp_path / "strategies"
    rng = np.random.default_rng(1)
    rows = []
    for i in range(144):
        cls = i % 4
        box = _box(rng)
        centre = _on(box)
        if cls == 2:
            centre = (0.05, 0.05)
        elif cls == 3 and i % 8 == 7:
            centre = (0.93, 0.07)
        rows.append(_ok_row(out, i, cls, cls, box, centre, rng, overlay=True))
    return _write_run(out, rows)


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
        "import sys; from pipeline.cli.report import main; "
        f"main([{str(synthetic_run)!r}, 'report.group_by=label']); "
        "assert 'tensorflow' not in sys.modules, 'report imported tensorflow'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (synthetic_run / "classes.parquet").is_file() and (
        synthetic_run / "report.html"
    ).is_file()


def test_report_command_errors(tmp_path, synthetic_run, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2 and "no summary.parquet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a bad strategies value: one line, before any work
        main([str(synthetic_run), "strategies.grid=1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "strategies.grid=1; expected an integer >= 2" in err
    with pytest.raises(SystemExit) as exc:  # a setting of neither group
        main([str(synthetic_run), "strategy.grid=8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown setting 'strategy.grid=8'" in err
    assert not (synthetic_run / "classes.parquet").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.parametrize("run", ["synthetic_run", "strategy_run"])
def test_report_renders_in_headless_chromium(run, request, tmp_path):
    """The page loads with every image (mean maps, overlays, cluster mean maps) and draws;
    strategy_run adds the Strategies sections with their inline SVG pictures."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    out = request.getfixturevalue(run)
    build_audit(out, ReportConfig(), StrategiesConfig(min_class_n=20))
    n_img = (out / "report.html").read_text().count("<img ")
    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--virtual-time-budget=5000",
    ]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-500:]
    attrs = dict(re.findall(r'data-([a-z]+)="([^"]*)"', body.group(0)))
    assert attrs.get("ready") == "1", body.group(0)
    assert int(attrs["images"]) == n_img >= 5 and attrs["broken"] == "0", body.group(0)
    assert "fish" in dom.stdout
    if run == "strategy_run":  # the browser parsed the pictures: one SVG circle per map
        assert dom.stdout.count('<section class="strategies"') == 2
        pictures = re.findall(r"<svg class=\"embedding\".*?</svg>", dom.stdout, re.S)
        assert len(pictures) == 2 and all(p.count("data-c=") == 36 for p in pictures)
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1400,2000", f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000  # a real page, not a blank one
    # a broken link is caught
    (out / audit_png(out)).unlink()
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


# ----------------------------------------------------------------------------- strategies


def _articles(page: str) -> dict[str, str]:
    """The flagged-class articles of a report, in page order: class name -> its HTML."""
    found = re.findall(r"<article class='flag' data-class='([^']+)'>(.*?)</article>", page, re.S)
    return dict(found)


def _cards(section: str) -> list[tuple[int, bool, str]]:
    """(cluster, flagged, HTML) of each strategy card of a Strategies section, in page order."""
    parts = re.split(r"(?=<div class='strategy[ '])", section)
    cards = []
    for part in parts:
        m = re.match(r"<div class='strategy( flagged)?' data-cluster='(\d+)'>", part)
        if m:
            cards.append((int(m.group(2)), bool(m.group(1)), part))
    return cards


def _dots(svg: str) -> list[tuple[str, int]]:
    """(fill, cluster) of each point of an embedding picture (not its legend)."""
    return [(f, int(c)) for f, c in re.findall(r"fill='(#[0-9a-f]{6})' data-c='(\d+)'", svg)]


def test_report_orders_by_suspicion_with_strategies_of_flagged_classes(strategy_run):
    audit = build_audit(strategy_run, ReportConfig(), StrategiesConfig(min_class_n=20))
    classes = audit.classes.set_index("class")
    clusters = audit.strategies.clusters
    by_suspicion = classes[classes["flagged"]].sort_values("suspicion", ascending=False)
    assert set(by_suspicion.index) == {"fish", "bird"} and (by_suspicion["suspicion"] >= 1).all()
    fish = clusters[clusters["class"] == "fish"]
    corner = fish[fish["peak_x_mean"] > 0.8]  # the rows looking at the top-right corner
    assert len(fish) >= 2 and corner["flagged"].all() and corner["n"].sum() == 18
    page = (strategy_run / "report.html").read_text()
    articles = _articles(page)
    assert list(articles) == by_suspicion.index.tolist()
    table = page[page.index("id='class-table'") :].split("</table>")[0]
    rows = re.findall(r"<tr[^>]*><td class='t'>([^<]+)</td>", table)
    assert rows == classes.sort_values("suspicion", ascending=False, kind="stable").index.tolist()
    assert "<th class=sorted-desc>suspicion</th><th>clusters</th>" in table
    by_row = pd.read_parquet(strategy_run / "summary.parquet").set_index("row")
    for name, article in articles.items():
        cls = int(classes.loc[name, "class_index"])
        own = clusters[clusters["class_index"] == cls].set_index("cluster")
        section = re.search(r"<section class='strategies'[^>]*>(.*?)</section>", article, re.S)
        assert section and "Strategies" in section.group(1), name
        cards = _cards(section.group(1))
        assert sorted(k for k, _, _ in cards) == own.index.tolist()  # one card per cluster
        flags = [f for _, f, _ in cards]
        assert flags == sorted(flags, reverse=True)  # flagged clusters first
        for k, flagged, card in cards:
            c = own.loc[k]
            assert flagged == c["flagged"]
            assert f"cluster {k} · {c['n']} images · {c['share']:.0%} of the class" in card
            assert f'src="{report_html.href(c["mean_map_png"])}"' in card
            for reason in c["flag_reasons"]:
                assert html.escape(reason) in card
            shown = [report_html.href(by_row.loc[r, "overlay_path"]) for r in c["example_rows"][:4]]
            assert re.findall(r"<img src=\"(overlays/[^\"]+)\"", card) == shown
        result = next(r for r in audit.strategies.found if r.class_index == cls)
        dots = _dots(section.group(1))
        assert len(dots) == len(result.rows)  # one point per clustered map
        counts = np.bincount([c for _, c in dots], minlength=result.n_clusters)
        np.testing.assert_array_equal(counts, np.bincount(result.labels))
        colours = dict(dots)  # fill -> cluster: one colour per cluster, none shared
        assert len(colours) == result.n_clusters and sorted(colours.values()) == list(
            range(result.n_clusters)
        )
    for name in ("cat", "dog"):  # clustered, but not flagged: no strategies, no picture
        cls = int(classes.loc[name, "class_index"])
        assert (clusters["class_index"] == cls).any()
        assert f"data-class-index='{cls}'" not in page
    assert page.count("<svg") == 2 and "http://www.w3.org/2000/svg" in page  # the namespace only
    assert "pointing = peak within stats.pointing_tolerance pixels of the box" in page


def test_flagged_classes_and_class_table_follow_suspicion_not_class_order(strategy_run):
    audit = build_audit(strategy_run, ReportConfig(), StrategiesConfig(min_class_n=20))
    summary = pd.read_parquet(strategy_run / "summary.parquet")
    names = dict(enumerate(NAMES))
    for bird, fish, expected in ((2.0, 5.0, ["fish", "bird"]), (5.0, 2.0, ["bird", "fish"])):
        suspicion = {"cat": 0.5, "dog": 0.0, "bird": bird, "fish": fish}
        classes = audit.classes.assign(suspicion=audit.classes["class"].map(suspicion))
        report_html.write_html(strategy_run, replace(audit, classes=classes), summary, names)
        page = (strategy_run / "report.html").read_text()
        assert list(_articles(page)) == expected
        table = page[page.index("id='class-table'") :].split("</table>")[0]
        rows = re.findall(r"<tr[^>]*><td class='t'>([^<]+)</td>", table)
        assert rows == [*expected, "cat", "dog"]
        assert f"{expected[0]} <span class='note'>(n=36 · suspicion 5.00)" in page


def test_strategy_picture_subsamples_evenly(strategy_run, monkeypatch):
    monkeypatch.setattr(report_html, "SCATTER_MAX", 20)
    build_audit(strategy_run, ReportConfig(), StrategiesConfig(min_class_n=20))
    page = (strategy_run / "report.html").read_text()
    fish = _articles(page)["fish"]
    assert len(_dots(fish)) == 20 and "data-points='20'" in fish and "20 of 36" in fish
    picked = report_html.sample_rows(2500, 1000)
    assert len(picked) == 1000 and picked[0] == 0 and picked[-1] == 2499
    assert (np.diff(picked) >= 2).all() and (np.diff(picked) <= 3).all()  # evenly spaced
    np.testing.assert_array_equal(report_html.sample_rows(7, 1000), np.arange(7))


def test_embedding_2d_tsne_and_fallback():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(6, 4))
    np.testing.assert_array_equal(report_html.embedding_2d(small), small[:, 1:3])
    two = rng.normal(size=(40, 2))  # fewer than 3 columns: column 1 and a zero axis
    np.testing.assert_array_equal(report_html.embedding_2d(two)[:, 0], two[:, 1])
    assert not report_html.embedding_2d(two)[:, 1].any()
    assert not report_html.embedding_2d(np.zeros((2, 1))).any()
    blobs = np.concatenate([rng.normal(0, 0.01, (20, 5)), rng.normal(1, 0.01, (20, 5))])
    xy = report_html.embedding_2d(blobs)
    assert xy.shape == (40, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(xy, report_html.embedding_2d(blobs))  # same picture each run
    gap = np.linalg.norm(xy[:20].mean(axis=0) - xy[20:].mean(axis=0))
    assert gap > 3 * max(xy[:20].std(axis=0).max(), xy[20:].std(axis=0).max())  # apart


def test_report_without_strategies(strategy_run):
    audit = build_audit(strategy_run, ReportConfig(), StrategiesConfig(enabled=False))
    page = (strategy_run / "report.html").read_text()
    assert list(_articles(page)) == ["bird"]  # flagged by its own statistics only
    assert "class='strategies'" not in page and "<svg" not in page
    assert audit.strategies.clusters.empty
    summary = pd.read_parquet(strategy_run / "summary.parquet")
    older = replace(audit, strategies=None)  # an Audit built before strategies existed
    report_html.write_html(strategy_run, older, summary, dict(enumerate(NAMES)))
    page = (strategy_run / "report.html").read_text()
    assert list(_articles(page)) == ["bird"] and "<svg" not in page


def test_report_escapes_class_names_and_reasons(strategy_run):
    record = json.loads((strategy_run / "run.json").read_text())
    record["model"]["class_names"] = ["cat", "dog", "<b>bird</b>", "fish & 'chips'"]
    (strategy_run / "run.json").write_text(json.dumps(record))
    build_audit(strategy_run, ReportConfig(), StrategiesConfig(min_class_n=20))
    page = (strategy_run / "report.html").read_text()
    assert "<b>bird</b>" not in page and "&lt;b&gt;bird&lt;/b&gt;" in page
    assert "fish &amp; &#x27;chips&#x27;" in page and "fish & 'chips'" not in page


def test_misclassified_examples_are_the_most_confident_mistakes(synthetic_run):
    """The 4 cats taken for dogs (pred_score grows with the row), most confident first; the
    section lists them (no overlays in this run) and disappears with report.misclassified=0."""
    summary = pd.read_parquet(synthetic_run / "summary.parquet")
    ok = summary[summary["status"] == "ok"]
    mistakes = ok[ok["pred_index"] != ok["label_index"]]
    want = mistakes.sort_values("pred_score", ascending=False)["row"].tolist()
    assert len(want) == 4
    assert build_audit(synthetic_run, ReportConfig()).misclassified == want
    page = (synthetic_run / "report.html").read_text()
    assert "Misclassified examples (4)" in page
    for row in want:
        assert f"img{row} · cat → dog (0.5" in page
    assert build_audit(synthetic_run, ReportConfig(misclassified=2)).misclassified == want[:2]
    assert build_audit(synthetic_run, ReportConfig(misclassified=0)).misclassified == []
    assert "Misclassified examples" not in (synthetic_run / "report.html").read_text()
