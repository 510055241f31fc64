"""``oblix plugins new NAME --kind backend|store|agent|command``: a ready plugin package.

It writes ``oblix-NAME/`` from the templates in ``plugin_templates/``: ``pyproject.toml``
with the ``oblix`` entry point, the package with the hook implementation and a working part
of that kind, a test file that runs the kind's contract suite (``oblix.testing``) and uses the
plugin through its entry point, and a README. ``pip install -e .`` installs it and its tests
pass unchanged.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

import attrs
import click

from oblix_core.cli.common import handle_errors
from oblix_core.errors import ConfigError
from oblix_core.plugins.registry import Registry

TEMPLATES = Path(__file__).with_name("plugin_templates")
KINDS = ("backend", "store", "agent", "command")
#: What each kind's package holds, said in its pyproject and README.
SUMMARIES = {
    "backend": "An Oblix model backend: answers in capitals (a template to replace).",
    "store": "An Oblix session store: sessions in one SQLite file in the Oblix home.",
    "agent": "An Oblix monitoring agent: watches the free disk space of the Oblix home.",
    "command": "An Oblix command: says hello and counts the sessions of the store.",
}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@attrs.frozen
class PluginNames:
    """The names a plugin called ``name`` goes by: entry point, distribution, package, class."""

    name: str
    kind: str

    @classmethod
    def of(cls, raw: str, kind: str) -> PluginNames:
        name = re.sub(r"[-_]+", "_", raw.strip().lower()).removeprefix("oblix_")
        if not _NAME.fullmatch(name) or name.endswith("_"):
            raise ConfigError(
                f"{raw!r} cannot name a plugin: use lowercase letters, digits and '_' or '-', "
                "starting with a letter (e.g. 'shout' or 'my-store')."
            )
        if kind not in KINDS:
            raise ConfigError(f"Unknown plugin kind {kind!r}; choose one of {', '.join(KINDS)}.")
        return cls(name, kind)

    @property
    def values(self) -> dict[str, str]:
        """What each ``{{placeholder}}`` of the templates becomes."""
        return {
            "name": self.name,
            "dist": "oblix-" + self.name.replace("_", "-"),
            "package": f"oblix_{self.name}",
            "Class": "".join(part.capitalize() for part in self.name.split("_")),
            "command": self.name.replace("_", "-"),
            "kind": self.kind,
            "summary": SUMMARIES[self.kind],
        }


def _render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.search(r"\{\{\w+\}\}", text)
    assert left is None, f"{template}: no value for {left.group(0) if left else ''}"
    return text


def _refuse_taken(names: PluginNames, commands: Iterable[str]) -> None:
    """Refuse a name whose package, entry point or command is already someone's: installed,
    the plugin would shadow Oblix's own modules (``oblix_core``, ``oblix_file``...) or plugins,
    or be skipped as a clash."""
    values = names.values
    try:
        spec = importlib.util.find_spec(values["package"])
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or ())
        raise ConfigError(
            f"{names.name!r} cannot name a plugin: its package {values['package']!r} is already "
            f"installed ({where}) and the new one would shadow it; choose another name."
        )
    taken = {ep.name: ep for ep in entry_points(group="oblix")}
    if names.name in taken:
        dist = taken[names.name].dist
        owner = dist.metadata["Name"] if dist is not None else taken[names.name].value
        raise ConfigError(
            f"{names.name!r} cannot name a plugin: the entry point {names.name!r} is already the "
            f"plugin of the package {owner!r}; choose another name."
        )
    _refuse_registered(names)
    if names.kind == "command" and values["command"] in set(commands):
        raise ConfigError(
            f"{names.name!r} cannot name a command plugin: `oblix {values['command']}` exists already "
            "(a plugin may add commands, never replace one); choose another name."
        )


#: The registry table and the kind of part (as the registry names it) of each plugin kind.
PARTS = {
    "backend": ("models", "Model backend"),
    "store": ("stores", "Session store"),
    "agent": ("agents", "Agent"),
}


def _refuse_registered(names: PluginNames) -> None:
    """Refuse a name the part of that kind already has: installed, the plugin would be listed as
    failed (a name clash) at once."""
    if names.kind not in PARTS:
        return
    table, kind = PARTS[names.kind]
    registry = Registry.load()
    if names.name in getattr(registry, table):
        raise ConfigError(
            f"{names.name!r} cannot name a {names.kind} plugin: the {kind.lower()} {names.name!r} is already "
            f"registered by the plugin {registry.owner(kind, names.name)!r}; choose another name."
        )


def write_package(name: str, kind: str, where: Path, *, commands: Iterable[str] = ()) -> Path:
    """Write the package for a plugin ``name`` of ``kind`` under ``where``; returns its folder.

    Refuses (:class:`ConfigError`) to write over anything that exists, and a name whose
    package is already importable, whose entry point is already a plugin's, or (a command
    plugin) that names one of ``commands`` (those of ``oblix`` when run from the command line).
    """
    names = PluginNames.of(name, kind)
    _refuse_taken(names, commands)
    values = names.values
    target = where / values["dist"]
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or --dir, or remove it.")
    files = {
        "pyproject.toml": TEMPLATES / "common" / "pyproject.toml.tmpl",
        "README.md": TEMPLATES / "common" / "README.md.tmpl",
        f"{values['package']}/__init__.py": TEMPLATES / kind / "__init__.py.tmpl",
        f"tests/test_{names.name}.py": TEMPLATES / kind / "test.py.tmpl",
    }
    rendered = {relative: _render(template, values) for relative, template in files.items()}
    for relative, text in rendered.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


@click.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the plugin provides.")
@click.option(
    "--dir",
    "where",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write the package folder (oblix-NAME).",
)
@click.pass_context
@handle_errors
def new(ctx: click.Context, name: str, kind: str, where: Path) -> None:
    """Write a ready plugin package: entry point, a working part, its contract tests."""
    root = ctx.find_root().command
    taken = list(root.commands) if isinstance(root, click.Group) else []
    target = write_package(name, kind, where, commands=taken)
    click.echo(f"Wrote {target}/ ({kind}). Next:\n  cd {target}\n  pip install -e '.[test]'\n  pytest")
