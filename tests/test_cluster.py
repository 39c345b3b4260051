"""Cluster-ready operation: one run per output folder (an OS lock), a graceful stop on SIGTERM
and SIGINT (exit code 75, the chunk in flight committed, a resume identical to an uninterrupted
run), quiet logs, and the soak benchmark's row accounting."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_dir
from test_report import _box, _ok_row, _on, _write_run
from test_resume import ROWS, _args, assert_same_results, cli, make_dataset

from pipeline import CONF_DIR
from pipeline.errors import EXIT_STOPPED
from pipeline.lock import LOCK_FILE
from pipeline.quiet import CPP_LINE
from pipeline.resume import PARTS

ROOT = Path(__file__).resolve().parent.parent
HOLD = "from pipeline.lock import lock_folder; import sys, time; lock_folder(sys.argv[1]); "
HOLD += "print('held', flush=True); time.sleep(120)"


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s lock until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def plain_env() -> dict[str, str]:
    """This environment without TensorFlow's log level (`import pipeline` in this process set
    one, which a child would take for the user's) and without fault injection."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GRADCAM_AUDIT"))}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in [folder, *folder.rglob("*")]
    }


def parts(out: Path) -> int:
    return len(list((out / PARTS).glob("part-*.parquet"))) if out.exists() else 0


def test_second_run_on_a_locked_folder_exits_2_at_start_and_writes_nothing(
    model_files, dataset, tmp_path
):
    out = tmp_path / "o"
    first = holder(out)
    try:
        before = snapshot(out)
        proc = run_cli(*_args(model_files, dataset, out), env=plain_env())
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on " in lines[0], proc.stderr[-2000:]
        assert "is in use by another run" in lines[0] and not proc.stdout.strip()
        assert snapshot(out) == before  # no .hydra/, no log, no state, nothing
        for command in ("merge", "report"):  # the light commands take the same lock
            code = f"from pipeline.cli.{command} import main; main()"
            other = subprocess.run(
                [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT
            )
            assert other.returncode == 2 and f"pid {first.pid}" in other.stderr, other.stderr
    finally:
        first.kill()
        first.wait()
    assert snapshot(out) == before


def test_a_sigkilled_run_leaves_no_lock_that_blocks_the_next(model_files, dataset, tmp_path):
    out = tmp_path / "o"
    killed = cli(_args(model_files, dataset, out), fault="compute:3")
    assert killed.returncode == -9 and (out / LOCK_FILE).is_file()
    holder_of = json.loads((out / LOCK_FILE).read_text())
    assert holder_of["pid"] and holder_of["host"] and holder_of["since"]
    final = cli(_args(model_files, dataset, out))
    assert final.returncode == 0, final.stderr[-2000:]
    assert len(pd.read_parquet(out / "summary.parquet")) == ROWS


def test_sigterm_commits_the_chunk_in_flight_and_exits_75(model_files, dataset, tmp_path):
    out = tmp_path / "o"
    # the 3rd file written is an overlay of the first batch. With chunks of 3 batches, chunk 1
    # cannot begin before it: the loop adds a 3rd pending batch only once the 1st's files are
    # written (PENDING_BATCHES). With chunks of 2 the loop could open chunk 1 before that write
    # when the step ran ahead of the writers, and commit 16 rows (a fresh clone caught it).
    args = [a for a in _args(model_files, dataset, out) if not a.startswith("chunk_batches=")]
    proc = cli([*args, "chunk_batches=3"], fault="write:3:term")
    assert proc.returncode == EXIT_STOPPED, proc.stderr[-2000:]
    assert "SIGTERM: finishing the chunk in flight" in proc.stdout
    line = "stopped by SIGTERM: 12 of 60 rows committed; run the same command again to resume"
    assert line in proc.stdout, proc.stdout[-2000:]
    assert parts(out) == 1 and (out / "state.json").is_file()
    assert not (out / "summary.parquet").exists() and not list(out.rglob("*.tmp"))
    assert "gradcam-audit: error" not in proc.stderr and "Traceback" not in proc.stderr


def test_stop_grace_s_bounds_the_wait(model_files, dataset, tmp_path):
    out = tmp_path / "o"
    # the signal lands while the first batch computes: its chunk cannot be complete yet (a
    # later point races with the main thread, which sees the signal between batches only)
    proc = cli(_args(model_files, dataset, out, "stop_grace_s=0"), fault="compute:1:term")
    assert proc.returncode == EXIT_STOPPED, proc.stderr[-2000:]
    assert "stop_grace_s=0.0 is up" in proc.stdout and "0 of 60 rows committed" in proc.stdout
    assert parts(out) == 0 and not list((out / "heatmaps").glob("chunk-*.npy"))


def test_a_second_sigterm_stops_at_once(model_files, dataset, tmp_path):
    out = tmp_path / "o"
    proc = cli(_args(model_files, dataset, out), fault="write:3:term2")
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]  # 143 in a shell
    assert "finishing the chunk in flight" in proc.stdout and "stopped by" not in proc.stdout
    assert not (out / "summary.parquet").exists()


def test_sigint_from_outside_stops_gracefully(model_files, dataset, tmp_path):
    """Ctrl-C: the real signal from another process, once the loop has started."""
    out = tmp_path / "o"
    command = [sys.executable, "-m", "pipeline", *_args(model_files, dataset, out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "auditing 60 of 60 rows" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (EXIT_STOPPED, 0), stderr[-2000:]  # 0: it finished first
    if proc.returncode == EXIT_STOPPED:
        assert "stopped by SIGINT" in stdout and "KeyboardInterrupt" not in stderr
    assert cli(_args(model_files, dataset, out)).returncode == 0


@pytest.mark.slow
def test_sigterm_at_random_points_then_resume_is_identical(model_files, dataset, tmp_path):
    clean = tmp_path / "clean"
    assert cli(_args(model_files, dataset, clean)).returncode == 0
    seed = int(time.time())
    rng = random.Random(seed)
    out = tmp_path / "stopped"
    stages = ["decode", "compute", "write", "chunk", "commit"]
    rng.shuffle(stages)
    stopped = re.compile(r"stopped by SIGTERM: (\d+) of 60 rows committed; run the same command")
    stops = []
    for stage in stages:
        before = parts(out)
        chunks_left = 8 - before
        if chunks_left < 2:  # a stop in the last chunk lets the run finish (exit 0)
            break
        # the N-th pass lands before the last chunk: decode and write passes are about rows,
        # compute passes batches (2 a chunk), chunk and commit passes chunks
        rows_top, half = 8 * (chunks_left // 2 - 1), chunks_left // 2
        top = {"decode": rows_top, "write": rows_top, "compute": 2 * half - 1}
        # commits lag PENDING_BATCHES batches behind the loop: only a commit at least two
        # chunks before the end comes while a chunk is still to begin (else the run finishes)
        late = min(half, chunks_left - 2)
        top |= {"chunk": late, "commit": late}
        if stage in ("chunk", "commit") and late < 1:
            continue
        fault = f"{stage}:{rng.randint(1, max(1, top[stage]))}:term"
        proc = cli(_args(model_files, dataset, out), fault=fault)
        assert proc.returncode == EXIT_STOPPED, f"seed {seed}: {fault}: {proc.stderr[-800:]}"
        found = stopped.search(proc.stdout)
        assert found, f"seed {seed}: {fault}: {proc.stdout[-800:]}"
        assert int(found[1]) == 8 * parts(out) and parts(out) >= before
        if stage in ("chunk", "commit"):  # the signal came while a chunk was being committed
            assert parts(out) > before, f"seed {seed}: {fault} lost the chunk in flight"
        assert not (out / "summary.parquet").exists()
        stops.append(fault)
    assert len(stops) >= 3, f"seed {seed}: only {stops}"
    final = cli(_args(model_files, dataset, out))
    assert final.returncode == 0, final.stderr[-2000:]
    assert_same_results(clean, out)


def test_a_default_run_prints_no_tensorflow_log_lines_or_warnings(
    model_files, image_folder, tmp_path
):
    images = image_folder(6)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in images) + "\n")
    env = plain_env()
    args = ["model=custom", f"model.path={model_files['rgb']}", f"data.manifest={manifest}"]
    proc = run_cli(*args, f"output_dir={tmp_path / 'o'}", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    noisy = [line for line in proc.stderr.splitlines() if CPP_LINE.match(line)]
    assert not noisy, noisy
    assert "warning" not in proc.stderr.lower(), proc.stderr[-2000:]
    assert "absl::InitializeLog" not in proc.stderr
    assert "audited 6 rows" in proc.stdout and "per class" in proc.stdout
    logged = [line for line in proc.stdout.splitlines() if line.startswith("[20")]
    assert len(logged) == 2 and "[pipeline.model][INFO] - model " in logged[0], logged
    assert "auditing 6 of 6 rows" in logged[1]  # the progress bar's heading
    assert "done: 6 rows" in (tmp_path / "o" / "gradcam-audit.log").read_text()
    debug = run_cli(*args, f"output_dir={tmp_path / 'd'}", "log_level=debug", env=env)
    assert debug.returncode == 0, debug.stderr[-2000:]
    assert any(CPP_LINE.match(line) for line in debug.stderr.splitlines()), debug.stderr[-2000:]


def test_help_names_gradcam_audit():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "gradcam-audit is powered by Hydra" in proc.stdout
    assert "run is powered" not in proc.stdout


def test_slurm_preset_requeues_and_signals_before_the_grace():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.max_num_timeout >= 1 and launcher.additional_parameters.requeue is True
    assert launcher.signal_delay_s > cfg.stop_grace_s + 30  # time to start, commit and exit


@pytest.mark.slow
def test_soak_accounts_for_every_row_once(tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--soak", "200"]
    command += ["--soak-images", "40", "--batch-size", "16", "--soak-chunk-batches", "2"]
    command += ["--shards", "2", "--kills", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == result["rows_in_summary"] == 200
    assert result["every_row_once"] and result["missing"] == result["duplicated"] == 0
    assert result["kills"] == 1 and result["processes"] == 3 and result["shards"] == 2
    assert result["files"] > 0 and result["bytes"] > 0 and result["peak_rss_mb"] > 100
    assert result["rows_per_second"] > 0


def test_overlay_command_refuses_a_locked_folder(tmp_path):
    """gradcam-audit-overlays rewrites summary.parquet: on a folder another process holds it
    stops with exit 2 naming the holder, and changes nothing."""
    rng = np.random.default_rng(0)
    boxes = [_box(rng) for _ in range(3)]
    rows = [_ok_row(tmp_path, i, i, i, box, _on(box), rng) for i, box in enumerate(boxes)]
    synthetic_run = _write_run(tmp_path, rows)
    before = (synthetic_run / "summary.parquet").read_bytes()
    first = holder(synthetic_run)
    try:
        code = "from pipeline.cli.overlays import main; main()"
        proc = subprocess.run(
            [sys.executable, "-c", code, str(synthetic_run)], capture_output=True, text=True
        )
        assert proc.returncode == 2 and f"pid {first.pid}" in proc.stderr, proc.stderr
    finally:
        first.kill()
        first.wait()
    assert (synthetic_run / "summary.parquet").read_bytes() == before
