"""The shape the design asks of the code: packages in layers without import cycles, plugins on
the public module only, an SDK that never loads the command line, short functions, modules of
one idea (about 800 lines is a hint; the ceiling here only catches a module that lost its idea)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 1000


@functools.cache
def _tree(path: Path) -> ast.Module:
    """``path`` parsed, once for the whole run: four tests of this file read every module."""
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _long_functions(folder: Path) -> list[str]:
    offenders = []
    for path in folder.rglob("*.py"):
        if "build" in path.parts:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return offenders


def test_no_function_is_longer_than_sixty_lines() -> None:
    assert _long_functions(ROOT / "oblix_core") + _long_functions(ROOT / "plugins") == []


def test_no_module_grows_past_a_thousand_lines() -> None:
    big = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for folder in ("oblix_core", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert big == []


# -- layers: every import counted, at any depth ------------------------------------------

#: Where the importable code lives, and the folder its module names start from.
SOURCES = {"oblix_core": ROOT, "oblix": ROOT, "plugins": ROOT / "plugins"}


def _all_modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for folder, base in SOURCES.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "build" in path.parts:
                continue
            name = ".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")
            found[name] = (path, _tree(path))
    return found


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports_anywhere(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module ``node`` imports, inside functions too; ``if TYPE_CHECKING:`` bodies skipped."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            assert isinstance(child, ast.If)
            for other in child.orelse:
                yield from _imports_anywhere(other, module, is_package)
            continue
        if isinstance(child, ast.Import):
            yield from (alias.name for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - child.level + 1]
                base = ".".join([*parts, *([child.module] if child.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in child.names)
        yield from _imports_anywhere(child, module, is_package)


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (the most specific module each import names);
    computed once for the run (two tests read it, neither changes it)."""
    modules = _all_modules()
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in modules.items():
        edges = set()
        for imported in _imports_anywhere(tree, name, path.name == "__init__.py"):
            parts = imported.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    if candidate != name:
                        edges.add(candidate)
                    break
        graph[name] = edges
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return [*stack[stack.index(child) :], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycle_at_any_depth() -> None:
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


#: The core's packages from the bottom up: a unit may import only units of a lower rank (or
#: itself). ``plugins.hookspecs`` and ``plugins.dependencies`` are the plugin contract, below
#: everything that implements or calls it; ``plugins.registry`` loads plugins and sits high.
LAYERS: dict[str, int] = {
    "errors": 0,
    "oblix_core": 1, "secrets": 1, "fileio": 1, "validation": 1, "fields": 1,
    "agents": 2, "models": 2, "plugins.hookspecs": 2, "plugins.dependencies": 2, "plugins.contract": 2,
    "sessions": 3,
    "usage": 4, "documents": 4,
    "request": 5,
    "config": 6, "plugins": 6, "terminal": 6,
    "testing": 7, "compat": 7,
    "client": 8,
    "cli": 9,
    "__main__": 10,
}  # fmt: skip


def _unit(module: str) -> str | None:
    """The layer unit of a core module: its package (``request``), or the module itself."""
    parts = module.split(".")
    if parts[0] != "oblix_core":
        return None
    if len(parts) == 1:
        return "oblix_core"
    if ".".join(parts[1:3]) in LAYERS:
        return ".".join(parts[1:3])
    return parts[1]


def test_core_packages_import_only_lower_layers() -> None:
    offenders = []
    for module, imported in _import_graph().items():
        unit = _unit(module)
        if unit is None:
            continue
        assert unit in LAYERS, f"{module}: add its package to LAYERS in tests/test_code_shape.py"
        for other in imported:
            target = _unit(other)
            if target is not None and target != unit and LAYERS[target] >= LAYERS[unit]:
                offenders.append(
                    f"{module} ({unit}, layer {LAYERS[unit]}) imports {other} (layer {LAYERS[target]})"
                )
    assert offenders == []


def test_every_core_package_says_what_it_owns_and_may_import() -> None:
    for init in (ROOT / "oblix_core").glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc or init.parent.name == "testing", f"{init.relative_to(ROOT)}: docstring"


def test_the_cycle_finder_finds_a_cycle_inside_a_function() -> None:
    tree = ast.parse("def f():\n    from b import x\n")
    assert list(_imports_anywhere(tree, "a", False)) == ["b", "b.x"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_plugins_import_the_core_only_through_the_public_module() -> None:
    offenders = []
    for name, (path, tree) in _all_modules().items():
        if not path.is_relative_to(ROOT / "plugins"):
            continue
        for imported in _imports_anywhere(tree, name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top == "oblix_core" or (top == "oblix" and not imported.startswith("oblix.plugin")):
                offenders.append(f"{path.relative_to(ROOT)}: {imported}")
    assert offenders == []


@pytest.mark.parametrize("doc", ["plugins.md", "hooks.md"])
def test_plugin_docs_teach_only_the_public_module(doc: str) -> None:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    private = sorted({m for m in _dotted_core_names(text) if not m.startswith("oblix_core.testing")})
    assert private == [], f"docs/{doc} names private modules: {private}"
    assert "oblix.plugin" in text


def _dotted_core_names(text: str) -> set[str]:
    import re

    return set(re.findall(r"oblix_core(?:\.\w+)+|from oblix_core import", text))


def test_the_sdk_never_loads_the_command_line(tmp_path: Path) -> None:
    code = (
        "import sys, anyio, oblix\n"
        f"client = oblix.OblixClient(home={str(tmp_path)!r})\n"
        "anyio.run(client.shutdown)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('click', 'rich'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
