"""The shape the design asks of the code: no import cycles in the core, short functions, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600


def _modules(folder: str) -> dict[str, ast.Module]:
    base = ROOT / folder
    found = {}
    for path in base.rglob("*.py"):
        relative = path.relative_to(base.parent if folder == "oblix_core" else base).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Modules imported at import time (not under ``if TYPE_CHECKING:`` nor inside functions)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_has_no_runtime_import_cycle() -> None:
    # package __init__ modules only re-export their submodules: edges between real modules count
    packages = {"oblix_core", "oblix_core.testing"}
    modules = {n: t for n, t in _modules("oblix_core").items() if n not in packages}
    graph = {
        name: {m for m in _runtime_imports(tree) if m in modules and m != name}
        for name, tree in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(child) :], child]))
            elif child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def _long_functions(folder: Path) -> list[str]:
    offenders = []
    for path in folder.rglob("*.py"):
        if "build" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def test_no_function_is_longer_than_sixty_lines() -> None:
    assert _long_functions(ROOT / "oblix_core") + _long_functions(ROOT / "plugins") == []


def test_no_module_grows_past_six_hundred_lines() -> None:
    big = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for folder in ("oblix_core", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert big == []
