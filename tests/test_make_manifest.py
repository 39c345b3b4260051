"""scripts/make_manifest.py: rows, labels, resolvable paths, classes.txt, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.manifest import read_manifest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_manifest.py"

# class -> files (relative to the class folder); non-images and hidden files must be skipped
TREE = {
    "dog": ["b.PNG", "a.jpg", "sub/c.webp", "notes.txt", ".hidden.jpg", ".thumbs/t.jpg"],
    "cat": ["z.JPEG", "y.bmp", "x.gif", "w.tif", "v.TIFF"],
    "empty": [],
}
EXPECTED = [  # sorted by class, then by path inside the class
    ("cat/v.TIFF", "cat"),
    ("cat/w.tif", "cat"),
    ("cat/x.gif", "cat"),
    ("cat/y.bmp", "cat"),
    ("cat/z.JPEG", "cat"),
    ("dog/a.jpg", "dog"),
    ("dog/b.PNG", "dog"),
    ("dog/sub/c.webp", "dog"),
]
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".gif": "GIF"}
FORMATS |= {".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def run_script(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A class-per-folder tree of real (PIL-written) images plus files to skip."""
    root = tmp_path / "data"
    for i, (cls, files) in enumerate(TREE.items()):
        (root / cls).mkdir(parents=True)
        for j, name in enumerate(files):
            path = root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fmt = FORMATS.get(path.suffix.lower())
            if fmt is None:
                path.write_text("not an image")
            else:
                Image.new("RGB", (8 + j, 6), (40 * i, 30 * j, 90)).save(path, format=fmt)
    (root / "loose.png").write_bytes((root / "dog" / "b.PNG").read_bytes())  # no class: skipped
    (root / ".cache").mkdir()  # hidden folder: not a class
    return root


def test_default_csv_rows_labels_and_classes(tree: Path) -> None:
    done = run_script(tree.name, cwd=tree.parent)  # a relative DIR still gives absolute paths
    assert done.returncode == 0, done.stderr
    manifest = tree / "manifest.csv"
    raw = pd.read_csv(manifest, dtype=str)
    assert list(raw.columns) == ["path", "label"]
    expected_paths = [str((tree / p).resolve()) for p, _ in EXPECTED]
    assert raw["path"].tolist() == expected_paths
    assert raw["label"].tolist() == [label for _, label in EXPECTED]
    classes = (tree / "classes.txt").read_text(encoding="utf-8")
    assert classes == "cat\ndog\nempty\n"  # every class folder, so indices match the model
    assert "loose.png" in done.stderr and "empty" in done.stderr  # both warned about


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_relative_paths_resolve_in_the_pipeline(tree: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "elsewhere" / f"images.{fmt}"  # not under DIR: paths need ../
    done = run_script(tree, "-o", out, "--relative")
    assert done.returncode == 0, done.stderr
    table = read_manifest(out)
    assert table["manifest_path"].tolist() == [f"../data/{p}" for p, _ in EXPECTED]
    assert table["label"].tolist() == [label for _, label in EXPECTED]
    assert [Path(p).resolve() for p in table["path"]] == [(tree / p).resolve() for p, _ in EXPECTED]
    assert all(Path(p).is_file() for p in table["path"])
    assert (out.parent / "classes.txt").read_text(encoding="utf-8").split() == [
        "cat",
        "dog",
        "empty",
    ]


def test_format_flag_sets_default_name(tree: Path) -> None:
    done = run_script(tree, "--format", "parquet", "--relative")
    assert done.returncode == 0, done.stderr
    assert not (tree / "manifest.csv").exists()
    table = pd.read_parquet(tree / "manifest.parquet")
    assert table["path"].tolist() == [p for p, _ in EXPECTED]


@pytest.mark.parametrize("case", ["missing", "empty", "no_images"])
def test_exit_code_2_without_images(tmp_path: Path, case: str) -> None:
    root = tmp_path / "data"
    if case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "readme.txt").write_text("no images here")
    done = run_script(root)
    assert done.returncode == 2
    message = "folder not found" if case == "missing" else "no images in"
    assert message in done.stderr and str(root) in done.stderr
    assert not list(tmp_path.rglob("manifest.*")) and not list(tmp_path.rglob("classes.txt"))


def test_suffix_and_format_must_agree(tree: Path, tmp_path: Path) -> None:
    done = run_script(tree, "-o", tmp_path / "m.csv", "--format", "jsonl")
    assert done.returncode == 2
    assert "--format=jsonl" in done.stderr
    assert not (tmp_path / "m.csv").exists()
