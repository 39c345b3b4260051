"""The built-in demo, end to end through the command line, at a reduced size."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.demo import CLASSES

SMALL = ["demo.n_per_class=6", "demo.image_size=48", "demo.epochs=2", "progress=false"]


def demo(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *SMALL, f"output_dir={out}", *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_demo_runs_offline_end_to_end_and_reuses_its_cache(tmp_path):
    first = demo(tmp_path / "one")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "building the demo once" in first.stdout + first.stderr
    out = tmp_path / "one"
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == 6 * len(CLASSES) and (summary["status"] == "ok").all()
    assert set(summary["label"]) == set(CLASSES) and summary["energy_in_box"].notna().all()
    assert summary["group"].isin(["dark", "light"]).all()
    assert (out / ".hydra" / "config.yaml").is_file()
    assert len(list((out / "overlays").glob("*.jpg"))) == 6 * len(CLASSES)
    assert json.loads((out / "run.json").read_text())["counts"]["ok"] == 6 * len(CLASSES)
    assert f"outputs: {out}" in first.stdout and "per class" in first.stdout
    assert (out / "report.html").is_file() and (out / "classes.parquet").is_file()
    for name in CLASSES:
        assert name in first.stdout or name not in set(summary["target_label"])

    second = demo(tmp_path / "two")
    assert second.returncode == 0
    assert (
        "building the demo once" not in second.stdout + second.stderr
    )  # cached model and images reused
    again = pd.read_parquet(tmp_path / "two" / "summary.parquet")
    pd.testing.assert_series_equal(summary["pred_index"], again["pred_index"])
