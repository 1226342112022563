"""The package's shape: no gc10lib module imports another inside a function (except the CLI and
lines marked ``# lazy: <reason>``), and the module import graph has no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gc10lib"


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """Modules of gc10lib imported at module level, and every unmarked import inside a function."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    top: set[str] = set()
    inner: list[str] = []

    def names(node) -> list[str]:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod == "gc10lib":
                return [f"gc10lib.{a.name}" for a in node.names]
            return [mod]
        return [a.name for a in node.names]

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top |= {n for n in names(node) if n.startswith("gc10lib.")}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                if "# lazy:" not in here and not above.startswith("# lazy:"):
                    inner.append(f"{path.name}:{node.lineno}: {here.strip()}")
    return top, inner


MODULES = {
    "gc10lib." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if p.stem != "__init__"
}
STEPS = PACKAGE / "steps"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "gc10lib.cli"])
def test_no_imports_inside_functions(module):
    _, inner = _imports(MODULES[module])
    assert not inner, "imports inside functions (move them up or mark '# lazy: <reason>'):\n" + "\n".join(inner)


def test_import_graph_has_no_cycles():
    graph = {
        m: {d.rsplit(".", 1)[0] if d.rsplit(".", 1)[0] in MODULES else d for d in _imports(p)[0]}
        for m, p in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d not in MODULES:
                continue
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*stack, m, d])}"
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


def test_the_checker_sees_module_and_inner_imports(tmp_path):
    """The checks above can fail: a planted module's top-level and inner imports are both seen."""
    f = tmp_path / "planted.py"
    f.write_text("import gc10lib.data\n\ndef f():\n    from gc10lib import ensembles\n    return ensembles\n")
    top, inner = _imports(f)
    assert top == {"gc10lib.data"} and len(inner) == 1


def test_no_module_imports_another_modules_private_names():
    bad = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gc10lib"):
                bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, bad


def test_no_function_in_the_package_is_over_100_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_steps_sit_above_the_blocks():
    """Data flows one way: a step module uses building blocks; no block imports a step, and no step
    imports another step (each reads what earlier steps wrote, through the run folder)."""
    bad = []
    for m, path in MODULES.items():
        steps_used = {d for d in _imports(path)[0] if d.startswith("gc10lib.steps")}
        if path.parent == STEPS:
            bad += [f"{m} imports {d}" for d in steps_used]
        elif m not in ("gc10lib.api", "gc10lib.cli", "gc10lib.pipeline"):
            bad += [f"block {m} imports {d}" for d in steps_used]
    assert not bad, bad
    assert {p.stem for p in STEPS.glob("*.py")} >= {"train", "ensemble", "quantize", "explain", "distill", "deploy"}
