"""Acceptance: planted shortcuts are found (whole classes and minorities) and clean models
raise nothing. Each case trains a small CNN on generated data, then audits it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import custom_model

from pipeline.demo import SHAPES, Shortcut, make_arrays, train_model, write_audit_set
from pipeline.run import run

# (seed, class, share, tag kind, place): several seeds, classes, tags, places and shares
PLANTED = [
    (2, "circle", 0.4, "bar", "t"),
    (5, "square", 0.3, "bar", "r"),
    (1, "triangle", 0.2, "patch", "bl"),
]


def planted_case(folder: Path, seed: int, shortcut: Shortcut | None) -> Path:
    """Train the demo CNN on 64x64 shapes (160 per class) with the shortcut planted, and write
    a fresh audit set of 100 per class with a `path,label` manifest (no boxes). Returns the
    manifest; the model is folder/model.keras, the class names folder/classes.txt."""
    planted = (shortcut,) if shortcut else ()
    x, y = make_arrays(160, 64, seed, SHAPES, planted)
    train_model(folder / "model.keras", x, y, len(SHAPES), 12, seed)
    (folder / "classes.txt").write_text("\n".join(SHAPES) + "\n")
    return write_audit_set(folder, 100, 64, seed, SHAPES, planted, boxes=False)


def audit(make_cfg, folder: Path, manifest: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """(summary with the manifest's `tagged` truth, classes table, output folder)."""
    cfg = make_cfg(
        *custom_model(folder / "model.keras", manifest),
        f"model.class_names={folder / 'classes.txt'}",
        "overlays.enabled=false",
    )
    out = run(cfg).output_dir
    summary = pd.read_parquet(out / "summary.parquet")
    summary["tagged"] = pd.read_csv(manifest)["tagged"].to_numpy()[summary["row"]].astype(bool)
    return summary, pd.read_parquet(out / "classes.parquet"), out


@pytest.mark.slow
@pytest.mark.parametrize("seed,cls,share,kind,place", PLANTED)
def test_minority_shortcut_is_recovered_flagged_and_ranked_first(
    make_cfg, tmp_path, seed, cls, share, kind, place
):
    manifest = planted_case(tmp_path, seed, Shortcut(cls, share, kind, place))
    summary, classes, out = audit(make_cfg, tmp_path, manifest)
    tagged = summary["tagged"]
    assert 0.15 <= tagged[summary["label"] == cls].mean() <= share + 0.1
    clusters = pd.read_parquet(out / "clusters.parquet")
    index = SHAPES.index(cls)
    best = 0.0
    for _, c in clusters[(clusters["class_index"] == index) & clusters["flagged"]].iterrows():
        members = (summary["target_index"] == index) & (summary["cluster"] == c["cluster"])
        best = max(best, (members & tagged).sum() / (members | tagged).sum())
    assert best >= 0.8, clusters[["class", "cluster", "n", "flagged", "flag_reasons"]]
    ranked = classes.sort_values("suspicion", ascending=False)["class"].tolist()
    assert ranked[0] == cls, classes[["class", "suspicion", "flagged"]]
    assert classes.loc[classes["flagged"], "class"].tolist() == [cls]
    reasons = " ".join(classes.set_index("class").loc[cls, "flag_reasons"])
    assert "cluster" in reasons
    assert (summary.loc[summary["status"] == "error", "cluster"] == -1).all()


@pytest.mark.slow
def test_clean_model_raises_nothing(make_cfg, tmp_path):
    """The same kind of data (faint objects included), no tag: nothing is flagged."""
    manifest = planted_case(tmp_path, 0, None)
    _, classes, out = audit(make_cfg, tmp_path, manifest)
    assert not classes["flagged"].any(), classes[["class", "flag_reasons"]]
    assert not pd.read_parquet(out / "clusters.parquet")["flagged"].any()
    assert (classes["suspicion"] < 1).all()


@pytest.mark.slow
def test_demo_flags_exactly_its_planted_classes(make_cfg, tmp_path):
    """The demo plants a whole-class shortcut (`watermarked`: any shape plus a corner mark) and
    a minority one (a third of `triangle` carry a text tag, their triangle faint). A reduced
    demo is trained here; the audit must flag exactly those two classes."""
    cfg = make_cfg(
        f"demo.cache_dir={tmp_path / 'cache'}",
        "demo.n_per_class=48",
        "demo.image_size=64",
        "overlays.enabled=false",
    )
    result = run(cfg)
    summary = pd.read_parquet(result.output_dir / "summary.parquet")
    marked = summary[summary["label"] == "watermarked"]
    # only the mark tells the class apart (chance: 1 in 5), so this accuracy means it was learnt
    assert marked["correct"].mean() > 0.5, "the model did not learn the planted class"
    classes = pd.read_parquet(result.output_dir / "classes.parquet").set_index("class")
    assert sorted(classes.index[classes["flagged"]]) == ["triangle", "watermarked"], classes[
        ["flagged", "flag_reasons"]
    ]
    reasons = " ".join(classes.loc["watermarked", "flag_reasons"])
    assert "off the object" in reasons or "fixed in one place" in reasons
    assert any(r.startswith("cluster") for r in classes.loc["triangle", "flag_reasons"])
    assert len(classes.loc["watermarked", "examples"]) > 0
    assert (result.output_dir / "report.html").is_file()
