"""Acceptance: a class that carries a fixed artefact, learnt as a shortcut, gets flagged."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.run import run


@pytest.mark.slow
def test_planted_watermark_shortcut_is_flagged(make_cfg, tmp_path):
    """The demo set plants the shortcut: `watermarked` images show any of the four shapes plus a
    corner mark, so a model that gets them right must use the mark. A small CNN is trained on it
    here (a reduced demo), then the audit must flag that class for off-object or fixed-location
    attention, and at most one other class."""
    cfg = make_cfg(
        f"demo.cache_dir={tmp_path / 'cache'}",
        "demo.n_per_class=24",
        "demo.image_size=64",
        "demo.epochs=12",
    )
    result = run(cfg)
    summary = pd.read_parquet(result.output_dir / "summary.parquet")
    marked = summary[summary["label"] == "watermarked"]
    # only the mark tells the class apart (chance: 1 in 5), so this accuracy means it was learnt
    assert marked["correct"].mean() > 0.5, "the model did not learn the planted class"
    classes = pd.read_parquet(result.output_dir / "classes.parquet").set_index("class")
    assert classes.loc["watermarked", "flagged"], classes[["flagged", "flag_reasons"]]
    reasons = " ".join(classes.loc["watermarked", "flag_reasons"])
    assert "off the object" in reasons or "fixed in one place" in reasons
    assert classes["flagged"].sum() <= 2
    assert len(classes.loc["watermarked", "examples"]) > 0
    assert (result.output_dir / "report.html").is_file()
