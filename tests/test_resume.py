"""Overnight safety: SIGKILL + resume, bit-identical reruns, write failures, refusals, budget."""

from __future__ import annotations

import os
import random
import subprocess
import time

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import SIZE, custom_model, noise_pngs, run_cli, write_csv

from pipeline import faults, load_heatmaps
from pipeline.errors import ConfigError
from pipeline.faults import ENV
from pipeline.resume import PARTS
from pipeline.run import run

ROWS = 60  # with batch_size=4 and chunk_batches=2: 8 chunks of 8 rows


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def make_dataset(tmp_path):
    """60 rows: 56 small PNGs (some with boxes), 2 missing files, 1 text file, 1 duplicate."""
    folder = tmp_path / "img"
    noise_pngs(folder, 56, seed=1)
    lines = []
    for i in range(56):
        box = "4,4,20,20" if i % 3 == 0 else ",,,"
        lines.append(f"img/{i}.png,{i % 5},{box}")
    (folder / "note.png").write_text("not an image")
    lines += [
        "img/missing1.png,1,,,,",
        "img/note.png,2,,,,",
        "img/missing2.png,3,,,,",
        "img/7.png,2,,,,",
    ]
    return write_csv(tmp_path / "m.csv", "path,label,x0,y0,x1,y1", lines)


def _args(model_files, manifest, out, *extra):
    return [
        *custom_model(model_files["rgb"], manifest),
        "batch_size=4",
        "chunk_batches=2",
        "progress=false",
        "report.enabled=false",
        f"output_dir={out}",
        *extra,
    ]


def cli(args, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if fault:
        env[ENV] = fault
    return run_cli(*args, env=env)


def assert_same_results(a, b):
    """Identical summary and bit-identical heatmap arrays; same overlay files."""
    sa, sb = pd.read_parquet(a / "summary.parquet"), pd.read_parquet(b / "summary.parquet")
    pd.testing.assert_frame_equal(sa, sb)
    heat = sorted(p.name for p in (a / "heatmaps").iterdir())
    assert heat == sorted(p.name for p in (b / "heatmaps").iterdir())
    for name in heat:  # the chunk files, bit for bit
        assert np.array_equal(np.load(a / "heatmaps" / name), np.load(b / "heatmaps" / name)), name
    for x, y in zip(load_heatmaps(a), load_heatmaps(b), strict=True):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert sorted(os.listdir(a / "overlays")) == sorted(os.listdir(b / "overlays"))
    assert not list(b.rglob("*.tmp")) and not (b / PARTS).exists()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_identical(model_files, dataset, tmp_path):
    clean = tmp_path / "clean"
    assert cli(_args(model_files, dataset, clean)).returncode == 0
    seed = int(time.time())
    rng = random.Random(seed)
    out = tmp_path / "killed"
    stages = ["decode", "compute", "write", "commit"]
    rng.shuffle(stages)
    stages.append(rng.choice(stages))  # five kills, every stage at least once
    kills = []
    for stage in stages:
        committed = len(list((out / PARTS).glob("part-*.parquet"))) if out.exists() else 0
        left = ROWS - 8 * committed
        top = {"decode": left // 2, "compute": left // 8, "write": left, "commit": left // 16}
        fault = f"{stage}:{rng.randint(1, max(1, top[stage]))}"
        proc = cli(_args(model_files, dataset, out), fault=fault)
        assert proc.returncode == -9, f"seed {seed}: {fault} did not kill: {proc.stderr[-800:]}"
        assert not (out / "summary.parquet").exists()
        kills.append(fault)
    final = cli(_args(model_files, dataset, out))
    assert final.returncode == 0, final.stderr[-2000:]
    assert len(kills) == 5
    assert_same_results(clean, out)
    assert len(pd.read_parquet(out / "summary.parquet")) == ROWS


def test_two_runs_are_bit_identical(model_files, dataset, make_cfg, tmp_path):
    a = run(
        make_cfg(*_args(model_files, dataset, tmp_path / "a")[:-1], "report.enabled=false"),
        tmp_path / "a",
    )
    b = run(
        make_cfg(*_args(model_files, dataset, tmp_path / "b")[:-1], "report.enabled=false"),
        tmp_path / "b",
    )
    assert (a.ok, a.errors) == (b.ok, b.errors) == (57, 3)
    assert_same_results(tmp_path / "a", tmp_path / "b")


def test_disk_full_mid_run_then_rerun_completes(
    model_files, dataset, make_cfg, tmp_path, monkeypatch
):
    clean = tmp_path / "clean"
    run(make_cfg(*_args(model_files, dataset, clean)), clean)
    out = tmp_path / "full"
    cfg = make_cfg(*_args(model_files, dataset, out))
    monkeypatch.setenv(ENV, "write:50:enospc")  # the 50th file write fails
    with pytest.raises(OSError, match="No space left"):
        run(cfg, out)
    parts = list((out / PARTS).glob("part-*.parquet"))
    assert 0 < len(parts) < 8 and not (out / "summary.parquet").exists()
    assert not list(out.rglob("*.tmp"))  # the failed write left no temporary file
    for heat in (out / "heatmaps").iterdir():  # every chunk file present is whole
        assert np.load(heat).shape == (8, SIZE // 2, SIZE // 2)
    monkeypatch.delenv(ENV)
    result = run(cfg, out)
    assert result.rows == ROWS
    assert_same_results(clean, out)


@pytest.mark.parametrize("nth", [1, 3])
def test_disk_full_half_way_through_a_chunk_array_then_rerun_is_identical(
    model_files, dataset, make_cfg, tmp_path, monkeypatch, nth
):
    """The disk fills up with half of a chunk's map array written (heatmaps/chunk-*.npy):
    that chunk is not committed, nothing that looks whole is half written, and a rerun after
    space is freed completes identically."""
    clean = tmp_path / "clean"
    run(make_cfg(*_args(model_files, dataset, clean)), clean)
    out = tmp_path / "full"
    cfg = make_cfg(*_args(model_files, dataset, out))
    faults.reset()
    monkeypatch.setenv(ENV, f"chunk:{nth}:enospc")  # the nth chunk array, half written
    with pytest.raises(OSError, match="No space left"):
        run(cfg, out)
    assert len(list((out / PARTS).glob("part-*.parquet"))) == nth - 1
    assert not (out / "summary.parquet").exists() and not list(out.rglob("*.tmp"))
    arrays = sorted((out / "heatmaps").iterdir())
    assert [a.name for a in arrays] == [f"chunk-{c:06d}.npy" for c in range(nth - 1)]
    for heat in arrays:  # every chunk file present is whole
        assert np.load(heat).shape == (8, SIZE // 2, SIZE // 2)
    monkeypatch.delenv(ENV)
    assert run(cfg, out).rows == ROWS
    assert_same_results(clean, out)


def test_cli_reports_write_failure_and_resume_hint(model_files, dataset, tmp_path):
    proc = cli(_args(model_files, dataset, tmp_path / "o"), fault="write:3:enospc")
    assert proc.returncode == 1
    assert "cannot write outputs" in proc.stderr and "again to resume" in proc.stderr


def test_other_config_in_same_folder_is_refused_unless_resume_false(
    model_files, dataset, make_cfg, tmp_path
):
    out = tmp_path / "o"
    run(make_cfg(*_args(model_files, dataset, out)), out)
    with pytest.raises(ConfigError, match="different config or manifest.*resume=false"):
        run(make_cfg(*_args(model_files, dataset, out), "target=label"), out)
    mine = out / "my_notes.txt"
    mine.write_text("keep me")
    result = run(make_cfg(*_args(model_files, dataset, out), "target=label", "resume=false"), out)
    summary = pd.read_parquet(out / "summary.parquet")
    assert len(summary) == ROWS and result.rows == ROWS
    ok = summary[summary["status"] == "ok"]
    assert (ok["target_index"] == ok["label_index"]).all()
    assert mine.read_text() == "keep me"  # nothing the user did not ask to delete


def test_complete_run_is_not_recomputed(model_files, dataset, make_cfg, tmp_path):
    out = tmp_path / "o"
    cfg = make_cfg(*_args(model_files, dataset, out))
    run(cfg, out)
    before = (out / "summary.parquet").stat().st_mtime_ns
    again = run(make_cfg(*_args(model_files, dataset, out), "progress=true"), out)  # volatile key
    assert (out / "summary.parquet").stat().st_mtime_ns == before
    assert again.rows == ROWS and again.errors == 3


def test_error_budget_exit_code_3_after_writing_everything(model_files, dataset, tmp_path):
    out = tmp_path / "o"
    proc = cli(_args(model_files, dataset, out))  # 3 of 60 rows fail: 5% is not above 5%
    assert proc.returncode == 0
    out2 = tmp_path / "o2"
    proc = cli(_args(model_files, dataset, out2, "max_error_rate=0.02"))
    assert proc.returncode == 3, proc.stderr[-1000:]
    assert "3 of 60 rows failed" in proc.stderr
    assert "2  file not found" in proc.stderr and "1  not a recognised image format" in proc.stderr
    assert (out2 / "summary.parquet").is_file() and (out2 / "run.json").is_file()


def test_unwritable_output_dir_fails_before_work(model_files, dataset, make_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "out"
    with pytest.raises(ConfigError, match="not writable"):
        run(make_cfg(*_args(model_files, dataset, out)), out)


def test_lambda_layer_refused_in_safe_mode(tmp_path, dataset, make_cfg):
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(5)(x)).save(path)
    args = [
        f"model.path={path}",
        "model=custom",
        f"data.manifest={dataset}",
        "progress=false",
        "report.enabled=false",
    ]
    with pytest.raises(ConfigError, match="model.safe_mode=false"):
        run(make_cfg(*args), tmp_path / "o")
    result = run(make_cfg(*args, "model.safe_mode=false"), tmp_path / "o")
    assert result.ok == 57
