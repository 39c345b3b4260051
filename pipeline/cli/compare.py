"""`gradcam-audit-compare RUN_A RUN_B [key=value ...]`: compare two finished audits (no
TensorFlow)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.cli.common import fail
from pipeline.compare import compare_runs, compare_settings
from pipeline.compare.settings import CompareConfig
from pipeline.errors import ConfigError

PROG = "gradcam-audit-compare"


def main(argv: list[str] | None = None) -> None:
    """`gradcam-audit-compare RUN_A RUN_B [key=value ...]`: what changed from A to B."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ", ".join(CompareConfig.__dataclass_fields__)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare two audits of the same images (A before, B after): rows, classes, "
        "drift; writes compare.parquet, compare_classes.parquet, compare.json and "
        "compare.html, without TensorFlow.",
    )
    parser.add_argument("run_a", type=Path, help="the audit before (an output folder)")
    parser.add_argument("run_b", type=Path, help="the audit after")
    parser.add_argument("settings", nargs="*", help=f"KEY=VALUE, KEY one of: {settings}")
    args = parser.parse_args(argv)
    try:
        result = compare_runs(args.run_a, args.run_b, cfg=compare_settings(args.settings))
    except ConfigError as exc:
        fail(PROG, str(exc))
    counts = result.record["counts"]
    print(
        f"compare: {counts['matched']} rows matched ({counts['a_only']} only in A, "
        f"{counts['b_only']} only in B), {counts['drift_flagged']} of {counts['classes']} "
        f"classes drift-flagged: {result.html}"
    )
