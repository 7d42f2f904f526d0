"""The shape of the code: no import cycle, every module importable on its own, nothing heavy behind the CLI,
size limits that keep modules readable, and no study reaching into a library's private parts."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "calibration")
MAX_LINES = 400
MAX_PARAMETERS = 8


def modules() -> dict[str, Path]:
    files = sorted(p for k in PACKAGES for p in (ROOT / k).rglob("*.py"))
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, wherever the import stands (a function-local one hides a cycle)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    # a package's __init__ is imported by every module in it: only its own imports count
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    names = [m for m in modules() if not m.endswith("__main__")]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for m in names:  # each in a fresh interpreter: an import that only works after another module's fails here
        result = subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, f"{m}: {result.stderr[-400:]}"


def test_modules_stay_readable():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines"
    wide = []
    for m, p in modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                n -= bool(a.args) and a.args[0].arg in ("self", "cls")
                if n > MAX_PARAMETERS:
                    wide.append(f"{m}.{node.name} ({n})")
    assert wide == [], f"functions with more than {MAX_PARAMETERS} parameters"


def _outside_code() -> list[Path]:
    return sorted(p for k in ("tests", "benchmarks") for p in (ROOT / k).rglob("*.py"))


def _library_names(tree: ast.AST) -> set[str]:
    """The names a file binds to the project's modules (`from compress.prune import reconstruct as r`: r)."""
    mods, names = modules(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            names |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in mods}
    return names


def test_no_study_or_test_sets_a_library_global():
    """Tunables are passed in (configs, arguments), never assigned to a library module."""
    found = []
    for p in _outside_code():
        tree = ast.parse(p.read_text())
        library = _library_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in library:
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_no_benchmark_calls_a_private_library_function():
    mods = modules()
    found = []
    for p in sorted((ROOT / "benchmarks").rglob("*.py")):
        tree = ast.parse(p.read_text())
        aliases = _library_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                found.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module in mods:
                found += [f"{p.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_")]
    assert found == []
