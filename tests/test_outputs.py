"""Overlays: the jet-coloured map blended over the image, the same pixels whoever renders them
(the run, the report's rows, gradcam-audit-overlays); each overlays.select mode writes exactly
the overlays it promises."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import custom_model, write_csv
from PIL import Image

from pipeline.cli.overlays import main as overlays_main
from pipeline.config import ReportConfig
from pipeline.faults import ENV
from pipeline.outputs import atomic_write, atomic_write_file, jet_lut
from pipeline.overlays import OverlayStyle, blend_map, overlay_mode, report_rows, save_overlay
from pipeline.report.audit import misclassified_rows
from pipeline.report.html import CLUSTER_EXAMPLES
from pipeline.resume import remove_temporaries
from pipeline.run import run


def test_overlay_is_jet_of_the_bilinear_map_blended_with_alpha():
    base = Image.new("RGB", (30, 20), (100, 100, 100))
    heat = np.zeros((4, 6), np.float32)
    heat[:, 3:] = 1.0  # left cold, right hot
    out = np.asarray(blend_map(base, heat, 0.4)).astype(int)
    assert out.shape == (20, 30, 3)
    np.testing.assert_allclose(out[10, 1], np.round(0.6 * 100 + 0.4 * jet_lut()[0]), atol=1)
    np.testing.assert_allclose(out[10, 28], np.round(0.6 * 100 + 0.4 * jet_lut()[255]), atol=1)
    # in between, the bilinear ramp: each pixel is jet of its own level (a reference by hand)
    up = np.asarray(Image.fromarray(heat, "F").resize((30, 20), Image.BILINEAR))
    expected = 0.6 * 100 + 0.4 * jet_lut()[np.round(np.clip(up, 0, 1) * 255).astype(int)]
    np.testing.assert_allclose(out, expected, atol=2)  # a level apart at most: float order


WRITERS = {  # both atomic writers, writing `data` to `path`
    "atomic_write": lambda path, data: atomic_write(path, lambda tmp: Path(tmp).write_bytes(data)),
    "atomic_write_file": lambda path, data: atomic_write_file(path, lambda f: f.write(data)),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_file_write_makes_its_folder_only_when_the_folder_is_missing(
    tmp_path, monkeypatch, writer
):
    write = WRITERS[writer]
    made = []
    mkdir = Path.mkdir

    def counted(self: Path, *args, **kwargs) -> None:
        made.append(self)
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", counted)
    first = tmp_path / "overlays" / "deeper" / "a.jpg"
    write(first, b"a")
    assert made[0] == first.parent  # (pathlib makes the missing parents by calling itself)
    del made[:]
    write(first.with_name("b.jpg"), b"b")
    assert made == []  # the folder is there now: no mkdir for the second file
    assert first.read_bytes() == b"a" and first.with_name("b.jpg").read_bytes() == b"b"
    assert sorted(p.name for p in first.parent.iterdir()) == ["a.jpg", "b.jpg"]  # no temporary


def test_overlay_mode():
    assert overlay_mode("auto", True, 10_000, 10_000) == "all"
    assert overlay_mode("auto", True, 10_001, 10_000) == "report"
    assert overlay_mode("all", False, 5, 10) == "none"  # overlays.enabled=false wins
    assert overlay_mode("report", True, 5, 10) == "report"


@pytest.fixture
def audit(tmp_path, image_folder, model_files, make_cfg):
    paths = image_folder(12, seed=3, size=(64, 48))
    rows = [f"images/{p.name},r{i},{i % 3}" for i, p in enumerate(paths)]  # class indices
    rows.append("images/missing.png,gone,0")
    manifest = write_csv(tmp_path / "m.csv", "path,id,label", rows)

    def go(name: str, *overrides: str):
        extra = ["batch_size=4", "strategies.min_class_n=3", "report.min_class_n=2"]
        cfg = make_cfg(*custom_model(model_files["rgb"], manifest), *extra, *overrides)
        out = run(cfg, tmp_path / name).output_dir
        return out, pd.read_parquet(out / "summary.parquet")

    return go


def _overlays(out) -> set[str]:
    folder = out / "overlays"
    return {f"overlays/{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.mark.slow
def test_each_select_mode_writes_exactly_its_overlays_and_the_command_renders_the_same(audit):
    every, s_all = audit("all", "overlays.select=all")
    ok = s_all[s_all["status"] == "ok"]
    assert len(ok) == 12 and _overlays(every) == set(ok["overlay_path"])
    assert s_all.loc[s_all["status"] != "ok", "overlay_path"].isna().all()
    none, s_none = audit("none", "overlays.select=none")
    assert s_none["overlay_path"].isna().all() and not _overlays(none)
    # report: only the rows report.html shows, rendered after the run from the stored maps
    rep, s_rep = audit("report", "overlays.select=auto", "overlays.max_rows_all=5")
    classes = pd.read_parquet(rep / "classes.parquet")
    clusters = pd.read_parquet(rep / "clusters.parquet")
    wrong = misclassified_rows(s_rep, ReportConfig().misclassified)
    wanted = report_rows(classes, clusters, s_rep, CLUSTER_EXAMPLES, wrong)
    # the random model's mistakes are among the rows shown (the unit test below covers the
    # flagged classes' and clusters' examples)
    mistakes = s_rep[(s_rep["status"] == "ok") & s_rep["correct"].eq(False)]
    assert len(wrong) > 0 and sorted(wrong) == sorted(mistakes["row"])  # all (<= 12 of them)
    assert set(wrong) <= set(s_rep["row"].iloc[wanted])
    assert set(s_rep["overlay_path"].dropna()) == set(s_rep["overlay_path"].iloc[wanted])
    assert _overlays(rep) == set(s_rep["overlay_path"].dropna()) and len(_overlays(rep)) == len(
        wanted
    )
    html = (rep / "report.html").read_text()
    shown = {p for p in _overlays(every) if f"src='{p}'" in html or f'src="{p}"' in html}
    assert shown == set(s_rep["overlay_path"].dropna())  # every one shown, none missing
    for rel in s_rep["overlay_path"].dropna():  # the same pixels as the in-run writer's
        assert (rep / rel).read_bytes() == (every / rel).read_bytes(), rel
    # the command renders any selection later, again the same pixels
    shutil.rmtree(none / "overlays", ignore_errors=True)
    overlays_main([str(none), "--where", "row >= 8"])
    s_later = pd.read_parquet(none / "summary.parquet")
    later = s_later["overlay_path"].dropna()
    assert sorted(s_later.loc[later.index, "row"]) == [8, 9, 10, 11]  # 12 is the missing file
    for rel in later:
        assert (none / rel).read_bytes() == (every / rel).read_bytes(), rel


def test_report_rows_are_the_flagged_classes_and_their_clusters_and_the_misclassified():
    classes = pd.DataFrame(
        {"class_index": [0, 1], "flagged": [True, False], "examples": [[3, 5], [7]]}
    )
    clusters = pd.DataFrame(
        {"class_index": [0, 1], "cluster": [0, 0], "example_rows": [[5, 6, 8, 9, 10], [11]]}
    )
    summary = pd.DataFrame({"row": np.repeat(np.arange(12), 2), "rank": [0, 1] * 12})
    positions = report_rows(classes, clusters, summary, per_cluster=3, misclassified=[1, 3])
    assert summary.iloc[positions]["row"].tolist() == [1, 3, 5, 6, 8]  # not 9, 10 (cap), 7, 11
    assert (summary.iloc[positions]["rank"] == 0).all()


def test_overlay_command_refuses_a_folder_that_is_not_an_audit(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        overlays_main([str(tmp_path)])
    assert exit_.value.code == 2
    assert "is it a gradcam-audit output" in capsys.readouterr().err


def test_an_overlay_write_killed_before_its_rename_leaves_a_temporary_resume_removes(tmp_path):
    """A SIGKILL between an overlay's bytes and its rename leaves .<name>.<pid>-<thread>.tmp
    and no overlay; resume's cleanup removes it for its own rows' stems, not another shard's."""
    overlays, stem = tmp_path / "overlays", "0000003-img.v2"
    code = (
        "from pathlib import Path; from pipeline.outputs import atomic_write_file; "
        f"atomic_write_file(Path({str(overlays / (stem + '.jpg'))!r}), "
        "lambda file: file.write(b'jpeg bytes'))"
    )
    env = {**os.environ, ENV: "write:1:kill"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=False)
    assert proc.returncode == -signal.SIGKILL
    [left] = list(overlays.iterdir())
    assert left.name.startswith(f".{stem}.jpg.") and left.name.endswith(".tmp")
    assert left.read_bytes() == b"jpeg bytes"
    assert remove_temporaries(tmp_path / "own", tmp_path, {"0000004-other"}) == 0
    assert remove_temporaries(tmp_path / "own", tmp_path, {stem}) == 1
    assert not list(overlays.iterdir())


def test_an_overlay_file_is_the_jpeg_of_its_blend_at_the_configured_quality(tmp_path):
    """save_overlay encodes straight into its temporary file (where Pillow's encoder releases
    the GIL): the bytes are those of the blend encoded in memory at overlays.quality, and no
    temporary is left beside the overlay."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (75, 100, 3), np.uint8)
    heat = rng.random((7, 7)).astype(np.float32)
    style = OverlayStyle(quality=77)
    save_overlay(tmp_path / "overlays" / "a.jpg", "unused.jpg", heat, style, base)
    expected = io.BytesIO()
    blend_map(Image.fromarray(base), heat, style.alpha).save(expected, "JPEG", quality=77)
    assert (tmp_path / "overlays" / "a.jpg").read_bytes() == expected.getvalue()
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["a.jpg"]
