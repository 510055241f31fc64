"""Prompt templates: a saved prompt with ``$input`` and named ``$parameters``.

A template lives in ``$OBLIX_HOME/templates/<name>.toml``::

    prompt = "Summarise this in $words words:\\n\\n$input"
    system = "You are concise."        # optional
    model = "fast"                      # optional: an id, bare name or alias
    [defaults]                          # optional: parameter values used when none is given
    words = 50
    [options]                           # optional: generation options (temperature, stop...)
    temperature = 0.2

``$input`` is the text given when the template is used (the prompt argument and/or
stdin); a template without ``$input`` gets that text appended after a blank line.
``$$`` is a literal ``$``.
"""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any

import attrs
import tomlkit

from oblix_core.errors import OblixError
from oblix_core.fileio import write_atomically

#: The folder under ``$OBLIX_HOME`` that holds the templates.
FOLDER = "templates"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class TemplateError(OblixError):
    """A template that does not exist, cannot be read, or lacks a parameter."""


@attrs.frozen
class Template:
    """A saved prompt: its text and what goes with it."""

    name: str
    prompt: str
    system: str | None = None
    model: str | None = None
    defaults: dict[str, Any] = attrs.field(factory=dict)
    options: dict[str, Any] = attrs.field(factory=dict)

    def parameters(self) -> list[str]:
        """The named parameters of the prompt and system text (``$input`` excluded)."""
        names: list[str] = []
        for text in (self.prompt, self.system or ""):
            for name in string.Template(text).get_identifiers():
                if name != "input" and name not in names:
                    names.append(name)
        return names

    def check_parameters(self, given: dict[str, Any], flag: str) -> None:
        """Refuse values for parameters the template does not have (a typo would otherwise be
        ignored silently), naming the ones it has."""
        known = self.parameters()
        unknown = [name for name in given if name not in known]
        if not unknown:
            return
        names = ", ".join(f"${n}" for n in unknown)
        has = f"its parameters are {', '.join(known)}" if known else "it has no parameters"
        raise TemplateError(
            f"Template {self.name} has no parameter {names}: {has} "
            f"(give each as {flag} NAME VALUE; $input is the prompt itself)."
        )

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        return {k: v for k, v in data.items() if v not in (None, {}) and k != "name"}

    def render(self, text: str, params: dict[str, Any]) -> tuple[str, str | None]:
        """The prompt and system prompt with ``$input`` = ``text`` and the parameters filled in."""
        self.check_parameters(params, "-p")
        values = {k: str(v) for k, v in (self.defaults | params).items()}
        missing = [p for p in self.parameters() if p not in values]
        if missing:
            flags = " ".join(f"-p {name} VALUE" for name in missing)
            raise TemplateError(f"Template {self.name} needs {', '.join(missing)}: add {flags}.")
        values["input"] = text
        prompt = _fill(self.prompt, values, self.name)
        if "input" not in string.Template(self.prompt).get_identifiers() and text.strip():
            prompt = f"{prompt}\n\n{text}" if prompt.strip() else text
        system = _fill(self.system, values, self.name) if self.system else None
        return prompt, system


def _fill(text: str, values: dict[str, str], name: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except ValueError as exc:  # a lone "$" or "${"
        raise TemplateError(f"Template {name} has a stray $ ({exc}); write $$ for a literal $.") from None


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise TemplateError(
            f"{name!r} is not a usable template name: letters, digits, _, . and - (64 at most)."
        )
    return name


def template_path(home: Path, name: str) -> Path:
    return home / FOLDER / f"{check_name(name)}.toml"


def save_template(home: Path, template: Template) -> Path:
    """Write ``template`` (replacing one of the same name) and return its file."""
    if not template.prompt.strip() and not (template.system or "").strip():
        raise TemplateError("A template needs a prompt or a system prompt.")
    template.check_parameters(template.defaults, "-p")
    for text in (template.prompt, template.system or ""):
        if text:
            _fill(text, {n: "" for n in string.Template(text).get_identifiers()}, template.name)
    path = template_path(home, template.name)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, tomlkit.dumps(template.to_dict()).encode("utf-8"), mode=0o600)
    return path


def load_template(home: Path, name: str) -> Template:
    path = template_path(home, name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TemplateError(
            f"No template {name}; `oblix templates list` shows them, `oblix templates save` makes one."
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"Cannot read template {path}: {exc}.") from None
    return _parsed(name, data, path)


def _parsed(name: str, data: dict[str, Any], path: Path) -> Template:
    text = {k: data.get(k) for k in ("prompt", "system", "model")}
    tables = {k: data.get(k, {}) for k in ("defaults", "options")}
    if not all(v is None or isinstance(v, str) for v in text.values()) or not all(
        isinstance(v, dict) for v in tables.values()
    ):
        raise TemplateError(
            f"Template {path}: prompt, system and model must be strings; defaults and options tables."
        )
    return Template(name, text["prompt"] or "", text["system"], text["model"], **tables)


def list_templates(home: Path) -> list[Template]:
    """Every readable template, by name (unreadable ones are skipped)."""
    folder = home / FOLDER
    found = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            found.append(load_template(home, path.stem))
        except TemplateError:
            continue
    return found


def delete_template(home: Path, name: str) -> bool:
    path = template_path(home, name)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
