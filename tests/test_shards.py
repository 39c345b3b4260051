"""Scale-out: shards through Hydra launchers, merging, and several devices on one machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from conftest import custom_model, noise_pngs, write_csv
from conftest import run_cli as cli

from pipeline import load_heatmaps
from pipeline.cli.merge import main as merge_main
from pipeline.config import check_shard
from pipeline.errors import ConfigError
from pipeline.run import run
from pipeline.shards import merge, shard_rows


@pytest.fixture
def dataset(tmp_path):
    """30 rows: 28 small PNGs with labels and groups, 2 missing files."""
    noise_pngs(tmp_path / "img", 28, seed=2)
    lines = [f"img/{i}.png,{i % 5},{'a' if i % 2 else 'b'}" for i in range(28)]
    lines[7:7] = ["img/gone.png,1,a"]
    lines.append("img/gone2.png,2,b")
    return write_csv(tmp_path / "m.csv", "path,label,group", lines)


def _args(model_files, manifest, *extra):
    return [
        *custom_model(model_files["rgb"], manifest),
        "batch_size=4",
        "max_error_rate=0.1",
        "chunk_batches=1",
        "progress=false",
        *extra,
    ]


def test_shard_rows_partition_the_manifest_stably():
    parts = [shard_rows(103, 4, i, block=8) for i in range(4)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert parts[1][:10].tolist() == [8, 9, 10, 11, 12, 13, 14, 15, 40, 41]  # every 4th block
    assert np.array_equal(shard_rows(103, 4, 1, block=8), parts[1])
    with pytest.raises(ConfigError, match="shard.index=4 with shard.count=4"):
        check_shard(4, 4)


@pytest.mark.slow
def test_three_shard_multirun_with_submitit_local_equals_one_process(
    model_files, dataset, tmp_path
):
    single = tmp_path / "single"
    few = "strategies.min_class_n=3"  # so that the strategy clusters are compared too
    assert cli(*_args(model_files, dataset, f"output_dir={single}", few)).returncode == 0
    sharded = tmp_path / "sharded"
    proc = cli(
        "-m",
        *_args(model_files, dataset, f"output_dir={sharded}", few),
        "shard.count=3",
        "shard.index=0,1,2",
        "hydra/launcher=submitit_local",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((sharded / "shards").iterdir())) == 3
    a = pd.read_parquet(single / "summary.parquet")
    b = pd.read_parquet(sharded / "summary.parquet")  # merged by the callback at the end
    pd.testing.assert_frame_equal(a, b)
    assert (a["cluster"] >= 0).sum() >= 20  # clustered after the merge, as in one process
    for table in ("classes.parquet", "clusters.parquet", "groups.parquet", "confusion.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(single / table), pd.read_parquet(sharded / table)
        )
    assert (sharded / "report.html").is_file()
    for x, y in zip(load_heatmaps(single), load_heatmaps(sharded), strict=True):
        assert (x is None and y is None) or np.array_equal(x, y)
    assert sorted(os.listdir(single / "heatmaps")) == sorted(os.listdir(sharded / "heatmaps"))


def test_merge_names_missing_shards_and_can_merge_partially(
    model_files, dataset, make_cfg, tmp_path, capsys
):
    out = tmp_path / "o"
    for index in (0, 2):  # shard 1 of 3 never ran
        run(make_cfg(*_args(model_files, dataset), "shard.count=3", f"shard.index={index}"), out)
    with pytest.raises(ConfigError, match="shard 1 of 3 is missing"):
        merge(out)
    with pytest.raises(SystemExit) as exc:
        merge_main([str(out)])
    assert exc.value.code == 2 and "shard 1 of 3 is missing" in capsys.readouterr().err
    merge(out, allow_partial=True)
    merged = pd.read_parquet(out / "summary.parquet")
    assert merged["row"].tolist() == [r for r in range(30) if (r // 4) % 3 != 1]
    run(make_cfg(*_args(model_files, dataset), "shard.count=3", "shard.index=1"), out)
    merge(out)
    assert pd.read_parquet(out / "summary.parquet")["row"].tolist() == list(range(30))


def test_sharded_run_needs_an_explicit_output_dir(model_files, dataset):
    proc = cli(*_args(model_files, dataset), "shard.count=2", "shard.index=0")
    assert proc.returncode == 2 and "explicit output_dir" in proc.stderr


@pytest.mark.slow
def test_two_logical_cpus_with_devices_all_equal_one_device(model_files, dataset, tmp_path):
    """MirroredStrategy over 2 logical CPU devices: the same maps and predictions."""
    script = textwrap.dedent(f"""
        import logging, sys, tensorflow as tf
        logging.basicConfig(level=logging.INFO)
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from conftest import compose_cfg
        from pipeline.run import run
        for devices in ("auto", "all"):
            cfg = compose_cfg(*{_args(model_files, dataset)!r}, "batch_size=5",
                              f"devices={{devices}}", "report.enabled=false")
            run(cfg, {str(tmp_path)!r} + "/" + devices)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy over" in proc.stderr and "CPU:1" in proc.stderr
    one = pd.read_parquet(tmp_path / "auto" / "summary.parquet")
    two = pd.read_parquet(tmp_path / "all" / "summary.parquet")
    for col in ("status", "error", "pred_index", "target_index", "heatmap_file"):
        assert one[col].equals(two[col]), col
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-5)
    pairs = zip(load_heatmaps(tmp_path / "auto"), load_heatmaps(tmp_path / "all"), strict=True)
    for x, y in pairs:  # float16: one rounding step apart at most
        assert (x is None and y is None) or np.allclose(x, y, atol=1e-3)
