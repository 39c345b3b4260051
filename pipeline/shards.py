"""Shards: which rows a shard owns, where it writes, and merging the shards into one run.

The command line around merging (`gradcam-audit-merge`, the Hydra callback) is pipeline.cli.merge.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.outputs import atomic_write, write_json
from pipeline.report import audit_settings, build_audit
from pipeline.summary import SUMMARY_SCHEMA, error_kinds

log = logging.getLogger(__name__)
SHARDS = "shards"
_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def shard_rows(n_rows: int, count: int, index: int, block: int = 1) -> np.ndarray:
    """The manifest rows shard `index` of `count` owns: every count-th block of rows.

    Blocks are the run's chunks (batch_size * chunk_batches rows), so a shard computes exactly
    the batches a single process would, and its results are bit-identical. The split depends
    only on row numbers and the config: any machine computes the same one.
    """
    rows = np.arange(n_rows, dtype=np.int64)
    return rows[(rows // block) % count == index]


def shard_dir(out: Path, count: int, index: int) -> Path:
    """Where a shard keeps its summary, state and run.json (arrays go to the shared folders)."""
    return Path(out) if count == 1 else Path(out) / SHARDS / f"{index:03d}-of-{count:03d}"


def _shard_status(out: Path) -> tuple[int, dict[int, Path], list[str]]:
    """(shard count, complete shards by index, problems) from the folders under out/shards."""
    root = Path(out) / SHARDS
    found = {}
    counts = set()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = _NAME.match(folder.name)
        if match:
            found[int(match[1])] = folder
            counts.add(int(match[2]))
    if not found:
        raise ConfigError(f"{out} has no shards/ folder: nothing to merge")
    if len(counts) != 1:
        raise ConfigError(
            f"{out}/shards mixes shard counts {sorted(counts)}; merge one run at a time"
        )
    count = counts.pop()
    complete, problems = {}, []
    for index in range(count):
        folder = found.get(index)
        state = folder / "state.json" if folder else None
        if folder is None:
            problems.append(f"shard {index} of {count} is missing")
        elif (
            not (state.is_file() and json.loads(state.read_text()).get("complete"))
            or not (folder / "summary.parquet").is_file()
        ):
            problems.append(f"shard {index} of {count} is incomplete ({folder})")
        else:
            complete[index] = folder
    return count, complete, problems


def merge(out: str | Path, allow_partial: bool = False) -> Path:
    """Combine the shards' summaries into out/summary.parquet (manifest order) and run.json."""
    out = Path(out)
    count, complete, problems = _shard_status(out)
    if problems and not allow_partial:
        raise ConfigError(
            "cannot merge: " + "; ".join(problems) + " (merge.allow_partial=true "
            "merges what is complete)"
        )
    for problem in problems:
        log.warning("merging without it: %s", problem)
    tables = [
        pq.read_table(complete[i] / "summary.parquet", schema=SUMMARY_SCHEMA)
        for i in sorted(complete)
    ]
    merged = pa.concat_tables(tables).sort_by([("row", "ascending"), ("rank", "ascending")])
    atomic_write(out / "summary.parquet", lambda tmp: pq.write_table(merged, tmp))
    records = [json.loads((complete[i] / "run.json").read_text()) for i in sorted(complete)]
    record = dict(records[0])
    statuses = merged.column("status").to_numpy(zero_copy_only=False)
    ok = int((statuses == "ok").sum())
    record["counts"] = {"rows": merged.num_rows, "ok": ok, "errors": merged.num_rows - ok}
    record["shards"] = {
        "count": count,
        "merged": sorted(complete),
        "missing": problems,
        "timing": [r.get("timing") for r in records],
    }
    record.pop("timing", None)
    write_json(out / "run.json", record)
    log.info(
        "merged %d of %d shards: %d rows -> %s",
        len(complete),
        count,
        merged.num_rows,
        out / "summary.parquet",
    )
    return out / "summary.parquet"


def merge_and_report(out: Path, allow_partial: bool = False) -> tuple[int, int, list, float]:
    """merge(), then the class report with the settings the shards ran with.

    Returns (rows, errors, commonest error kinds, max_error_rate) for the error budget.
    """
    merge(out, allow_partial)
    config = json.loads((out / "run.json").read_text()).get("config", {})
    report, strategies, seed = audit_settings(config)
    if report.enabled:
        build_audit(out, report, strategies, seed)
    summary = pd.read_parquet(out / "summary.parquet", columns=["status", "error"])
    errors = int((summary["status"] != "ok").sum())
    return len(summary), errors, error_kinds(summary["error"]), config.get("max_error_rate", 1.0)
