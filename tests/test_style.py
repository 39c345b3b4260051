"""The house style is enforced: ruff lint and format are clean (configured in pyproject.toml)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIRS = ["pipeline", "scripts", "tests"]  # not whatever virtualenv sits in the checkout


@pytest.mark.parametrize("args", [["check", *DIRS], ["format", "--check", *DIRS]])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the test extra)")
    proc = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def _functions(tree: ast.AST, depth: int = 0):
    """(function node, nesting depth) for every function, methods at the depth of their class."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, depth
            yield from _functions(node, depth + 1)
        else:
            yield from _functions(node, depth)


def _sources(*dirs: str):
    for folder in dirs:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(), str(path))


def test_functions_fit_on_a_screen():
    """No function over 60 lines, no nested function over 15 (STYLE.md)."""
    long = [
        f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, tree in _sources("pipeline", "scripts")
        for fn, depth in _functions(tree)
        if fn.end_lineno - fn.lineno + 1 > (15 if depth else 60)
    ]
    assert not long, long


def test_imports_inside_functions_say_why():
    """An import inside a function is there to keep TensorFlow (or an optional extra) out of a
    light command, and a comment on its line or the line above says so."""
    silent = []
    for path, tree in _sources("pipeline"):
        lines = path.read_text().splitlines()
        for fn, _ in _functions(tree):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here, above = lines[node.lineno - 1], lines[node.lineno - 2]
                    if "#" not in here and not above.strip().startswith("#"):
                        silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not silent, silent


def test_no_branch_on_a_cam_method_name_outside_cam():
    """A method's options and checks live in its plugin (pipeline/cam/), not in the stages."""
    names = [p.stem for p in (ROOT / "conf" / "cam").glob("*.yaml")]
    found = []
    for path, tree in _sources("pipeline"):
        if "cam" in path.relative_to(ROOT / "pipeline").parts[:1]:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):  # name == "scorecam", name in ("eigencam", ...)
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and const.value in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {const.value!r}")
    assert not found, found
