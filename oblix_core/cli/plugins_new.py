"""``oblix plugins new NAME --kind backend|store|agent|command``: a ready plugin package.

It writes ``oblix-NAME/`` from the templates in ``plugin_templates/``: ``pyproject.toml``
with the ``oblix`` entry point, the package with the hook implementation and a working part
of that kind, a test file that runs the kind's contract suite (``oblix.testing``) and uses the
plugin through its entry point, and a README. ``pip install -e .`` installs it and its tests
pass unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import click

from oblix_core.cli.common import handle_errors
from oblix_core.errors import ConfigError

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
        name = raw.strip().lower().replace("-", "_").removeprefix("oblix_")
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


def write_package(name: str, kind: str, where: Path) -> Path:
    """Write the package for a plugin ``name`` of ``kind`` under ``where``; returns its folder.

    Refuses (:class:`ConfigError`) to write over anything that exists.
    """
    names = PluginNames.of(name, kind)
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
@handle_errors
def new(name: str, kind: str, where: Path) -> None:
    """Write a ready plugin package: entry point, a working part, its contract tests."""
    target = write_package(name, kind, where)
    click.echo(f"Wrote {target}/ ({kind}). Next:\n  cd {target}\n  pip install -e '.[test]'\n  pytest")
