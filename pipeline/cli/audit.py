"""`gradcam-audit` (also `python -m pipeline`): the Hydra shell around pipeline.run.run.

Exit codes (pipeline.errors): 0 done; 1 outputs could not be written (rerun to resume);
2 a bad config or input, or output_dir in use by another run, before any work; 3 more rows
failed than max_error_rate; 75 stopped by SIGTERM/SIGINT after committing the chunk in flight
(rerun to resume).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pipeline import CONF_DIR, quiet, stop
from pipeline.cli.common import check_error_budget, fail, one_line
from pipeline.config import register_configs, validate
from pipeline.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_STOPPED, ConfigError, Stopped
from pipeline.lock import lock_folder

log = logging.getLogger(__name__)
PROG = "gradcam-audit"


class _Started:
    """Whether Hydra reached the task: a SystemExit(1) before it is a config error (exit 2)."""

    task = False


def precheck(argv: list[str]) -> None:
    """Compose and check the config from the command line first, so a bad override or value
    fails in one line before Hydra creates any folder; then take the output folder's lock."""
    if any(arg.startswith("-") for arg in argv):  # --help, --cfg, -m ...: Hydra's own business
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=argv)
    except Exception as exc:  # hydra/omegaconf errors for unknown groups, keys, bad values
        fail(PROG, f"bad config: {one_line(exc)}")
    try:
        validate(cfg)
        quiet.setup(cfg.log_level)  # before _check_cam imports TensorFlow
        _check_cam(cfg)
    except ConfigError as exc:
        fail(PROG, str(exc))
    _check_shard_output(cfg)
    _lock(cfg)


def _lock(cfg: DictConfig) -> None:
    """Take the run's folder before Hydra writes into it (its .hydra/ and log), so a second
    run on the folder stops here and writes nothing. A ${now:...} folder is new to this run:
    run() takes it (Hydra resolves the time itself)."""
    raw = OmegaConf.to_container(cfg, resolve=False).get("output_dir")
    if "${" in str(raw):
        return
    # here: pipeline.shards loads pandas and the report (2 s) that --help never needs
    from pipeline.shards import shard_dir

    try:
        lock_folder(shard_dir(cfg.output_dir, cfg.shard.count, cfg.shard.index))
    except ConfigError as exc:
        fail(PROG, str(exc))


def _check_cam(cfg: DictConfig) -> None:
    """The CAM method's own checks (its name, options it cannot take), by building it."""
    from pipeline import cam  # here: the methods are TensorFlow code, which --help never needs

    cam.from_config(OmegaConf.to_object(cfg.cam))


def _check_shard_output(cfg: DictConfig) -> None:
    """Every shard of a sharded run must write into the one output_dir it names."""
    if cfg.shard.count > 1:
        if "${now:" in str(OmegaConf.to_container(cfg, resolve=False).get("output_dir")):
            fail(PROG, "sharded runs need an explicit output_dir=... shared by all shards")


def task(cfg: DictConfig) -> None:
    """The Hydra task: run, then print where the outputs are and the per-class table."""
    _Started.task = True
    quiet.setup(cfg.log_level)  # again: a multirun's jobs do not pass through precheck
    from pipeline.run import run  # here, not at the top: keeps TensorFlow out of --help

    _freeze_heap()
    _check_shard_output(cfg)  # again: a multirun's jobs do not pass through precheck
    out = cfg.output_dir if cfg.shard.count > 1 else HydraConfig.get().runtime.output_dir
    try:
        with stop.install():
            result = run(cfg, out)
    except ConfigError as exc:
        fail(PROG, str(exc))
    except OSError as exc:
        message = "everything committed so far is kept: run the same command again to resume"
        fail(PROG, f"cannot write outputs ({exc}); {message}", code=EXIT_FAILED)
    except Stopped as exc:
        log.warning("%s; run the same command again to resume", exc)
        stop.forward()  # under submitit: its handler requeues the job (and exits)
        sys.exit(EXIT_STOPPED)
    print(
        f"\naudited {result.rows} rows: {result.ok} ok, {result.errors} errors "
        f"in {result.seconds:.1f} s"
    )
    print(f"outputs: {result.output_dir}  (summary.parquet, heatmaps/, overlays/, run.json)")
    if result.class_table:
        print(f"report: {result.output_dir / 'report.html'}")
        by = "explained class" if cfg.report.group_by == "target" else "true label"
        print(f"\nper class (by {by}):")
        print(result.class_table)
    if cfg.shard.count == 1:  # a sharded run's budget is checked when the shards are merged
        check_error_budget(result.rows, result.errors, result.top_errors, cfg.max_error_rate)


def _freeze_heap() -> None:
    """Move every object alive now (the imports' million, which live as long as the process)
    out of the collector's reach: the interpreter's last collections at exit walked them all,
    0.6-1 s of CPU a run. In a multirun's later job the earlier job's model and traces are
    collected first, so they are not frozen with the rest."""
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()


@contextmanager
def _imports_uncollected() -> Iterator[None]:
    """No automatic collection inside, then every object alive frozen (as _freeze_heap does):
    for the imports. TensorFlow's import builds a million objects that live as long as the
    process, and the collector walked them again and again as they grew: 0.5-1.3 s of CPU
    (`import tensorflow, keras`: 6.0-6.2 against 6.3-7.4 s here). The collector's state is
    restored on the way out."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if was:
            gc.enable()


def shorthand(arg: str) -> str:
    """`metrics=[deletion,...]` means `metrics.names=[...]` (metrics.steps stays its own key)."""
    return "metrics.names=" + arg[len("metrics=") :] if arg.startswith("metrics=") else arg


def main() -> None:
    """Console entry point `gradcam-audit`."""
    register_configs()
    sys.argv[1:] = [shorthand(arg) for arg in sys.argv[1:]]
    with _imports_uncollected():
        precheck(sys.argv[1:])  # imports TensorFlow
    entry = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(task)
    try:
        entry()
    except SystemExit as exc:
        if exc.code == 1 and not _Started.task:  # Hydra rejected the config before the task
            sys.exit(EXIT_CONFIG)
        raise
