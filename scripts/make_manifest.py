"""Write a manifest (path,label) and classes.txt for a class-per-subfolder image tree.

    python scripts/make_manifest.py DIR [-o OUT] [--format csv|parquet|jsonl] [--relative]

DIR/<class>/<images> (sub-folders of a class included) -> OUT (default DIR/manifest.csv) with one
row per image, sorted by class then path, and classes.txt beside OUT: every class folder in
sorted order, one per line, for `model.class_names=` (the order Keras's
image_dataset_from_directory gives the classes). Paths are absolute unless --relative, which
writes them relative to OUT's folder, the folder the pipeline resolves relative paths against.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from pipeline.outputs import atomic_write  # temp file, then rename

log = logging.getLogger("make_manifest")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
FORMATS = {"csv": ".csv", "parquet": ".parquet", "jsonl": ".jsonl"}
SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
SUFFIX_FORMATS |= {".ndjson": "jsonl", ".json": "jsonl"}  # the pipeline reads .json as lines


class ManifestError(Exception):
    """A problem with the arguments or the tree: reported in one line, exit code 2."""


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def is_image(path: Path) -> bool:
    """A visible file with an image extension (any case)."""
    return path.is_file() and not _hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def class_images(class_dir: Path) -> list[Path]:
    """Images anywhere under one class folder, hidden files and folders skipped, sorted."""
    found = []
    for root, dirs, files in os.walk(class_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(p for p in (Path(root) / f for f in files) if is_image(p))
    return sorted(found, key=lambda p: p.relative_to(class_dir).as_posix())


def scan_tree(root: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """(class names sorted, [(image path, class name)] sorted by class then path)."""
    if not root.exists():
        raise ManifestError(f"folder not found: {root}")
    if not root.is_dir():
        raise ManifestError(f"not a folder: {root}; expected DIR/<class>/<images>")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p))
    loose = sorted(p.name for p in root.iterdir() if is_image(p))
    if loose:
        log.warning(
            "%d image(s) directly in %s ignored (no class folder), e.g. %s",
            len(loose),
            root,
            loose[0],
        )
    rows: list[tuple[Path, str]] = []
    for name in classes:
        images = class_images(root / name)
        if not images:
            log.warning("class folder %r has no images; kept in classes.txt", name)
        rows.extend((path, name) for path in images)
    if not rows:
        raise ManifestError(
            f"no images in {root}; expected DIR/<class>/<image files> with extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return classes, rows


def choose_output(root: Path, out: str | None, fmt: str | None) -> tuple[Path, str]:
    """The manifest path and its format, which must agree (the pipeline reads by suffix)."""
    if out is None:
        fmt = fmt or "csv"
        return root / f"manifest{FORMATS[fmt]}", fmt
    path = Path(out).expanduser()
    implied = SUFFIX_FORMATS.get(path.suffix.lower())
    if implied is None:
        raise ManifestError(
            f"-o {out}: unknown manifest suffix {path.suffix!r}; expected one of "
            f"{', '.join(SUFFIX_FORMATS)}"
        )
    if fmt is not None and fmt != implied:
        raise ManifestError(f"-o {out} has a {implied} suffix but --format={fmt}")
    return path, implied


def manifest_table(rows: list[tuple[Path, str]], manifest: Path, relative: bool) -> pd.DataFrame:
    """The path,label table; relative paths are POSIX-style, relative to the manifest's folder."""
    base = manifest.resolve().parent
    paths = []
    for path, _ in rows:
        full = path.resolve()
        paths.append(Path(os.path.relpath(full, base)).as_posix() if relative else str(full))
    return pd.DataFrame({"path": paths, "label": [label for _, label in rows]})


def write_manifest(table: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write the table as CSV, Parquet or JSON Lines."""
    writers: dict[str, Callable[[str], None]] = {
        "csv": lambda tmp: table.to_csv(tmp, index=False),
        "parquet": lambda tmp: table.to_parquet(tmp, index=False),
        "jsonl": lambda tmp: table.to_json(tmp, orient="records", lines=True, force_ascii=False),
    }
    atomic_write(path, writers[fmt])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make_manifest.py",
        description="Write a path,label manifest and classes.txt for DIR/<class>/<images>.",
    )
    parser.add_argument("dir", metavar="DIR", help="root folder with one sub-folder per class")
    parser.add_argument("-o", "--output", help="manifest file (default: DIR/manifest.<format>)")
    parser.add_argument("--format", choices=sorted(FORMATS), help="default: from -o, else csv")
    parser.add_argument(
        "--relative",
        action="store_true",
        help="write paths relative to the manifest's folder (default: absolute paths)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2: bad arguments or no images)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="make_manifest: %(levelname)s: %(message)s",
    )
    try:
        root = Path(args.dir).expanduser()
        out, fmt = choose_output(root, args.output, args.format)
        classes, rows = scan_tree(root)
        table = manifest_table(rows, out, args.relative)
        write_manifest(table, out, fmt)
        classes_path = out.parent / "classes.txt"
        text = "".join(f"{name}\n" for name in classes)
        atomic_write(classes_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except ManifestError as exc:
        log.error("%s", exc)
        return 2
    counts = table["label"].value_counts()
    log.debug("images per class: %s", ", ".join(f"{c}={counts.get(c, 0)}" for c in classes))
    print(f"wrote {out} ({len(table)} images, {len(classes)} classes) and {classes_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
