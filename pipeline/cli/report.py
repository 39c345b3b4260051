"""`gradcam-audit-report OUTPUT_DIR [report.key=value ...]`: rebuild the audit of a finished run."""

from __future__ import annotations

import json

from pipeline.cli.common import fail, output_dir_parser
from pipeline.errors import ConfigError
from pipeline.lock import locked
from pipeline.report import audit_settings, build_audit

PROG = "gradcam-audit-report"


def main(argv: list[str] | None = None) -> None:
    """`gradcam-audit-report OUTPUT_DIR [report.key=value ...]`: rebuild the audit of a run."""
    parser = output_dir_parser(
        PROG,
        "Rebuild classes/groups/confusion tables and report.html from a finished run "
        "(summary.parquet + saved maps), without TensorFlow.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="report.KEY=VALUE or strategies.KEY=VALUE, e.g. report.group_by=label",
    )
    args = parser.parse_args(argv)
    try:
        record_path = args.output_dir / "run.json"
        saved = (
            json.loads(record_path.read_text()).get("config", {}) if record_path.is_file() else {}
        )
        with locked(args.output_dir):  # not while a run or a merge writes there
            build_audit(args.output_dir, *audit_settings(saved, args.overrides))
    except ConfigError as exc:
        fail(PROG, str(exc))
    except Exception as exc:  # omegaconf validation of overrides
        if type(exc).__module__.startswith("omegaconf"):
            fail(PROG, f"bad setting: {exc}".splitlines()[0])
        raise
    print(f"report: {args.output_dir / 'report.html'}")
