"""What every command shares: one-line errors and the error budget's exit code."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from pipeline.errors import EXIT_CONFIG, EXIT_ERROR_BUDGET


def one_line(exc: BaseException) -> str:
    """A config exception (and its root cause) folded into one line, without search paths."""
    parts = []
    while exc is not None:
        text = re.sub(r":\s*\n\t", ": ", str(exc).strip())
        text = re.sub(r"\n\t", ", ", text)
        text = text.split("Config search path")[0].split("Set the environment variable")[0]
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
        if text and text not in parts:
            parts.append(text.split(" full_key:")[0].strip())
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts[:1] + parts[-1:] if len(parts) > 1 else parts) or "invalid config"


def fail(prog: str, message: str, code: int = EXIT_CONFIG) -> None:
    """Print one line on stderr and exit."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def check_error_budget(
    rows: int, errors: int, top_errors: list[tuple[str, int]], max_rate: float
) -> None:
    """Exit with code 3 (outputs already written) when too large a share of rows failed."""
    rate = errors / rows if rows else 0.0
    if rate > max_rate:
        print(
            f"\n{errors} of {rows} rows failed ({rate:.1%}), more than "
            f"max_error_rate={max_rate:.1%}; commonest errors:",
            file=sys.stderr,
        )
        for kind, count in top_errors:
            print(f"  {count:>7d}  {kind}", file=sys.stderr)
        sys.exit(EXIT_ERROR_BUDGET)


def output_dir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command that works on one audit's output folder (its first argument); logs to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("output_dir", type=Path)
    return parser
