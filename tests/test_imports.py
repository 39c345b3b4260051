"""Imports flow one way: the light commands load no TensorFlow, and no pipeline module imports
another one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"
LIGHT = "pipeline.report, pipeline.shards, pipeline.cli.report, pipeline.cli.merge, "
LIGHT += "pipeline.compare, pipeline.cli.compare"


def test_light_modules_load_no_tensorflow():
    code = f"import {LIGHT}, pipeline.summary, pipeline.errors; import sys; "
    code += "print('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def module_name(path: Path) -> str:
    """pipeline/report/audit.py -> pipeline.report.audit; a package's __init__ -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module loads: outside functions, including `if TYPE_CHECKING:`."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        found += top_level_imports(node)
    return found


def dependencies(name: str, path: Path, modules: set[str]) -> set[str]:
    """The pipeline modules `name` imports at load time (a from-import of a package names its
    __init__, plus the submodule when the imported name is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in top_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        deps |= {target for target in targets if target in modules}
    deps.discard(name)
    return deps


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: dependencies(name, path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None when it is acyclic (depth-first)."""
    done: set[str] = set()
    for start in sorted(graph):
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                done.add(node)
                stack.pop()
                path.pop()
            elif child in path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_resolves_packages_and_submodules():
    graph = import_graph()
    assert "pipeline.report.audit" in graph["pipeline.report"]
    assert {"pipeline.report.html", "pipeline.report.types"} <= graph["pipeline.report.audit"]
    assert "pipeline.report.audit" not in graph["pipeline.report.html"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
