"""The command line: Hydra app behaviour and bad configs failing fast with exit code 2."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest
from conftest import run_cli, write_csv

from pipeline.cli import audit
from pipeline.cli.audit import _freeze_heap


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("gradcam-audit: error:")]


def test_help_lists_config_groups():
    proc = cli("--help")
    assert proc.returncode == 0
    assert "model: " in proc.stdout and "custom, demo" in proc.stdout
    cam_line = next(line for line in proc.stdout.splitlines() if line.startswith("cam: "))
    assert "efficientnet_b0" in proc.stdout and "gradcam" in cam_line and "scorecam" in cam_line


def test_metrics_list_shorthand():
    proc = cli("metrics=[deletion,insertion]", "metrics.steps=4", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "- deletion" in proc.stdout and "steps: 4" in proc.stdout


def test_cfg_job_prints_composed_config():
    proc = cli("model=resnet50", "batch_size=7", "--cfg", "job")
    assert proc.returncode == 0
    assert "name: resnet50" in proc.stdout and "batch_size: 7" in proc.stdout
    assert "layer: conv5_block3_out" in proc.stdout


@pytest.fixture
def manifest(tmp_path):
    return write_csv(tmp_path / "m.csv", "path", ["a.png"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["model=nope"], "Could not find 'model/nope'"),
        (["model.wieghts=null"], "wieghts"),
        (["batch_size=many"], "batch_size"),
        (["batch_size=0"], "batch_size=0; expected a positive integer"),
        (["target=best"], "target='best'; expected pred, label, topk or a class index"),
        (["model=custom", "data.manifest=m.csv"], "model=custom needs model.path"),
    ],
    ids=["unknown_preset", "typo_key", "bad_type", "bad_value", "bad_target", "custom_no_path"],
)
def test_bad_overrides_exit_2_in_one_line(args, message, tmp_path):
    proc = cli(*args, f"output_dir={tmp_path / 'out'}")
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_model_file_exit_2(tmp_path, manifest):
    proc = cli(
        "model=custom",
        f"model.path={tmp_path / 'gone.keras'}",
        f"data.manifest={manifest}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "model.path not found" in lines[0] and "gone.keras" in lines[0]
    assert "Traceback" not in proc.stderr


def test_custom_without_path_exit_2(tmp_path, manifest):
    proc = cli("model=custom", f"data.manifest={manifest}", f"output_dir={tmp_path / 'out'}")
    assert proc.returncode == 2 and "model=custom needs model.path" in error_lines(proc)[0]


def test_unknown_layer_exit_2_lists_layers(tmp_path, manifest, model_files):
    proc = cli(
        "model=custom",
        f"model.path={model_files['rgb']}",
        "model.layer=conv9",
        f"data.manifest={manifest}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "'conv9' not found" in lines[0] and "last_conv" in lines[0]
    assert not (tmp_path / "out" / "summary.parquet").exists()


def test_manifest_without_path_exit_2(tmp_path, model_files):
    bad = write_csv(tmp_path / "bad.csv", "file,label", ["a.png,cat"])
    proc = cli(
        "model=custom",
        f"model.path={model_files['rgb']}",
        f"data.manifest={bad}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "no 'path' column" in lines[0] and "file, label" in lines[0]


def test_non_demo_model_needs_a_manifest(tmp_path):
    proc = cli("model=mobilenet_v2", "model.weights=null", f"output_dir={tmp_path / 'out'}")
    assert proc.returncode == 2 and "data.manifest is required" in error_lines(proc)[0]


class _Cycle:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_a_later_jobs_freeze_collects_the_earlier_jobs_garbage_first():
    """The task freezes the heap (imports out of the collector's reach); a multirun's next job
    must not freeze the previous job's cyclic garbage (its model, its traces) with it."""
    gc.disable()  # no automatic collection in between: only _freeze_heap's own can free it
    try:
        _freeze_heap()
        frozen = gc.get_freeze_count()
        garbage = _Cycle()
        gone = weakref.ref(garbage)
        del garbage  # garbage now, but only a collection frees a cycle
        _freeze_heap()
        assert frozen > 0 and gone() is None
    finally:
        gc.unfreeze()
        gc.enable()


def test_the_entry_points_imports_run_without_the_collector_and_end_frozen(monkeypatch):
    """precheck (which imports TensorFlow) runs with automatic collection off; what it leaves
    alive is frozen; the collector is back on afterwards, and also when precheck exits."""
    seen = []

    def precheck(argv: list[str]) -> None:
        seen.append(gc.isenabled())
        sys.modules.setdefault("_imported_by_precheck", _Cycle())  # lives on, like a module

    def entry(**_) -> object:
        return lambda task: lambda: seen.append(gc.isenabled())

    monkeypatch.setattr(audit, "precheck", precheck)
    monkeypatch.setattr(audit.hydra, "main", entry)
    monkeypatch.setattr(sys, "argv", ["gradcam-audit"])
    try:
        audit.main()
        assert seen == [False, True]
        assert gc.get_freeze_count() > 0 and gc.isenabled()

        def fails(argv: list[str]) -> None:
            raise SystemExit(2)

        monkeypatch.setattr(audit, "precheck", fails)
        with pytest.raises(SystemExit):
            audit.main()
        assert gc.isenabled()
    finally:
        sys.modules.pop("_imported_by_precheck", None)
        gc.unfreeze()
