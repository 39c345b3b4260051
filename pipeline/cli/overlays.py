"""`gradcam-audit-overlays OUTPUT_DIR [--where QUERY] [--ids FILE]`: render overlays after a run,
for any selection of its rows, from the stored maps and the original images (no TensorFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.cli.common import fail, output_dir_parser
from pipeline.errors import ConfigError
from pipeline.lock import locked
from pipeline.overlays import manifest_folder, render_rows, style_of, write_overlay_paths

PROG = "gradcam-audit-overlays"


def select(summary: pd.DataFrame, where: str | None, ids: Path | None) -> list[int]:
    """Positions of the ok rows that match the query and the id list (both when given)."""
    chosen = summary["status"] == "ok"
    if where:
        try:
            chosen &= summary.eval(where).astype(bool)
        except Exception as exc:  # pandas raises many types for a bad expression
            fail(PROG, f"--where {where!r} is not a query over the summary's columns: {exc}")
    if ids is not None:
        if not ids.is_file():
            fail(PROG, f"--ids file not found: {ids}")
        wanted = {line.strip() for line in ids.read_text().splitlines() if line.strip()}
        chosen &= summary["id"].astype(str).isin(wanted)
    return [int(p) for p in chosen.to_numpy().nonzero()[0]]


def main(argv: list[str] | None = None) -> None:
    parser = output_dir_parser(
        PROG, "Render overlays of a finished run's rows, without TensorFlow."
    )
    parser.add_argument(
        "--where", help='a pandas query over summary columns, e.g. "correct == False"'
    )
    parser.add_argument("--ids", type=Path, help="a text file of row ids, one per line")
    args = parser.parse_args(argv)
    out: Path = args.output_dir
    if not (out / "summary.parquet").is_file() or not (out / "run.json").is_file():
        fail(PROG, f"{out} has no summary.parquet and run.json: is it a gradcam-audit output?")
    summary = pd.read_parquet(out / "summary.parquet")
    record = json.loads((out / "run.json").read_text())
    positions = select(summary, args.where, args.ids)
    style = style_of(record.get("config", {}))
    try:
        with locked(out):  # it rewrites summary.parquet: not while a run, merge or report does
            paths = render_rows(out, summary, positions, style, manifest_folder(record, out))
            write_overlay_paths(out, paths)
    except ConfigError as exc:  # the folder is in use (pipeline.lock)
        fail(PROG, str(exc))
    done = int(paths.iloc[positions].notna().sum()) if positions else 0
    print(f"rendered {done} of {len(positions)} selected rows into {out / 'overlays'}")
    if done < len(positions):
        print(
            "rows without a stored map or whose image no longer loads were skipped", file=sys.stderr
        )
