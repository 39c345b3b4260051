"""`gradcam-audit-merge OUTPUT_DIR [--allow-partial]`, and the Hydra callback that merges a
multirun over shards when it ends."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.cli.common import check_error_budget, fail, output_dir_parser
from pipeline.errors import ConfigError
from pipeline.lock import locked
from pipeline.shards import merge_and_report

log = logging.getLogger(__name__)
PROG = "gradcam-audit-merge"


def main(argv: list[str] | None = None) -> None:
    """`gradcam-audit-merge OUTPUT_DIR [--allow-partial]`."""
    parser = output_dir_parser(
        PROG, "Combine the shards of a sharded run into one summary.parquet and report."
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="merge the complete shards even if some are missing or unfinished",
    )
    args = parser.parse_args(argv)
    try:
        with locked(args.output_dir):  # one command at a time on a folder (pipeline.lock)
            rows, errors, kinds, budget = merge_and_report(args.output_dir, args.allow_partial)
    except ConfigError as exc:
        fail(PROG, str(exc))
    print(f"merged {rows} rows ({errors} errors): {args.output_dir / 'summary.parquet'}")
    check_error_budget(rows, errors, kinds, budget)


class MergeShards:
    """Hydra callback: at the end of a multirun over shards, merge them when all are done."""

    def on_multirun_end(self, config, **kwargs) -> None:
        shard = config.get("shard")
        if not shard or shard.count <= 1:
            return
        try:
            with locked(config.output_dir):
                rows, errors, _, budget = merge_and_report(
                    Path(config.output_dir), bool(config.merge.allow_partial)
                )
            if rows and errors / rows > budget:
                log.warning(
                    "%d of %d rows failed, more than max_error_rate=%s", errors, rows, budget
                )
        except ConfigError as exc:
            log.error(
                "not merged: %s; run gradcam-audit-merge %s when the shards are done",
                exc,
                config.output_dir,
            )

    # Hydra calls these too; nothing to do
    def on_run_start(self, config, **kwargs) -> None: ...
    def on_run_end(self, config, **kwargs) -> None: ...
    def on_multirun_start(self, config, **kwargs) -> None: ...
    def on_job_start(self, config, **kwargs) -> None: ...
    def on_job_end(self, config, job_return, **kwargs) -> None: ...
