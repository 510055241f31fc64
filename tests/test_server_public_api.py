"""``plugins/oblix_server`` touches no private part of uvicorn (issue 27): a grep over its source.

Refused: importing a private uvicorn module (``uvicorn._subprocess``); naming uvicorn's
protocol classes (``H11Protocol``, ``HttpToolsProtocol``: subclassing them is how the
server used to depend on their internals); reaching a request cycle (``.cycle``, or
``getattr(x, "cycle")``); replacing another object's ``.transport``; and any ``_name``
reached on an object other than ``self`` or ``cls`` (an attribute, or a ``getattr`` string).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "plugins" / "oblix_server"
FORBIDDEN_NAMES = ("H11Protocol", "HttpToolsProtocol")
OWN = ("self", "cls")


def _is_own(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in OWN


def _import_findings(node: ast.AST) -> list[str]:
    modules: list[str] = []
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [
        f"imports {module}"
        for module in modules
        if module.split(".")[0] == "uvicorn" and any(part.startswith("_") for part in module.split("."))
    ]


def _getattr_findings(node: ast.Call) -> list[str]:
    """``getattr``/``setattr`` with a literal name: ``cycle``, or a private name of another object."""
    if not (
        isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr") and len(node.args) > 1
    ):
        return []
    name = node.args[1].value if isinstance(node.args[1], ast.Constant) else None
    if isinstance(name, str) and (name == "cycle" or (name.startswith("_") and not _is_own(node.args[0]))):
        return [f"{node.func.id}(..., {name!r})"]
    return []


def _attribute_findings(node: ast.AST) -> list[str]:
    found = []
    if isinstance(node, ast.Attribute):
        if node.attr == "cycle":
            found.append("reaches .cycle")
        if node.attr.startswith("_") and not node.attr.startswith("__") and not _is_own(node.value):
            found.append(f"reaches {ast.unparse(node)}")
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and target.attr == "transport" and not _is_own(target.value):
                found.append(f"replaces {ast.unparse(target)}")
    if isinstance(node, ast.Call):
        found += _getattr_findings(node)
    return found


def private_uses(source: str) -> list[str]:
    """What in ``source`` reaches past uvicorn's public API (see the module docs)."""
    found = [f"names {name}" for name in FORBIDDEN_NAMES if name in source]
    for node in ast.walk(ast.parse(source)):
        found += _import_findings(node) + _attribute_findings(node)
    return found


def test_the_check_finds_each_kind_of_private_use() -> None:
    source = (
        "from uvicorn.protocols.http.h11_impl import H11Protocol\n"
        "import uvicorn._subprocess\n"
        "class P(H11Protocol):\n"
        "    def f(self, other):\n"
        "        self.cycle.transport = other\n"
        "        getattr(self, 'cycle', None)\n"
        "        other._captured_signals.append(1)\n"
        "        getattr(other, '_server')\n"
    )
    found = private_uses(source)
    assert "names H11Protocol" in found and "imports uvicorn._subprocess" in found
    assert "reaches .cycle" in found and "replaces self.cycle.transport" in found
    assert "getattr(..., 'cycle')" in found and "reaches other._captured_signals" in found
    assert "getattr(..., '_server')" in found
    assert private_uses("class C:\n    def f(self):\n        self._x = 1\n        self.transport = 2\n") == []


def test_the_server_uses_only_uvicorns_public_api() -> None:
    sources = sorted(SERVER.rglob("*.py"))
    assert len(sources) > 10
    found = {str(path.relative_to(ROOT)): private_uses(path.read_text()) for path in sources}
    assert {path: uses for path, uses in found.items() if uses} == {}
