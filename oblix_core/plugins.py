"""Plugin loading: entry points of group ``oblix``, allow/deny lists, and the registry."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable
from importlib.metadata import Distribution, EntryPoint, entry_points
from types import ModuleType
from typing import Any

import attrs
import pluggy

from oblix_core import hookspecs
from oblix_core.agents import BaseAgent
from oblix_core.errors import ConfigError, PluginError
from oblix_core.models import ModelBackend
from oblix_core.stores import SessionStore

ENTRY_POINT_GROUP = "oblix"
LOAD_ENV = "OBLIX_LOAD_PLUGINS"
DISABLE_ENV = "OBLIX_DISABLE_PLUGINS"


@attrs.frozen
class PluginInfo:
    """A loaded plugin, as ``oblix plugins`` shows it."""

    name: str
    module: str
    package: str | None
    version: str | None
    hooks: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False) | {"hooks": list(self.hooks)}


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _selected(eps: Iterable[EntryPoint]) -> list[EntryPoint]:
    allow = _names_from_env(LOAD_ENV)
    deny = _names_from_env(DISABLE_ENV) or set()
    return [ep for ep in eps if (allow is None or ep.name in allow) and ep.name not in deny]


class OblixPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers which distribution each entry point came from."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.distributions: dict[str, Distribution] = {}


def build_plugin_manager(extra_plugins: Iterable[object] = ()) -> OblixPluginManager:
    """A plugin manager with the core's hooks, the selected entry points and ``extra_plugins``.

    ``OBLIX_LOAD_PLUGINS`` (comma-separated entry-point names; empty loads none) and
    ``OBLIX_DISABLE_PLUGINS`` select which entry points load. Unknown hook
    implementations raise :class:`PluginError`.
    """
    from oblix_core import routing

    pm = OblixPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(routing, name="oblix_core.routing")
    seen: set[str] = set()
    for ep in _selected(entry_points(group=ENTRY_POINT_GROUP)):
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"Plugin {ep.name!r} ({ep.value}) failed to load: {exc}. Fix or uninstall it, "
                f"or skip it with {DISABLE_ENV}={ep.name}."
            ) from exc
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            pm.distributions[ep.name] = ep.dist
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}. Hook names must match oblix_core.hookspecs exactly.") from exc
    return pm


def plugin_infos(pm: OblixPluginManager) -> list[PluginInfo]:
    """Describe every plugin registered in ``pm`` (the core's own routing included)."""
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = pm.distributions.get(name)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__qualname__
        infos.append(
            PluginInfo(
                name=name,
                module=module,
                package=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=hooks,
            )
        )
    return infos


def _collector(kind: str, base: type | None, into: dict[str, Any]) -> Callable[[str, Any], None]:
    def register(name: str, obj: Any) -> None:
        name = str(name)
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{kind} {name!r} must be a subclass of {base.__name__}, got {obj!r}.")
        if base is None and not callable(obj):
            raise PluginError(f"{kind} {name!r} must be callable, got {obj!r}.")
        if name in into and into[name] is not obj:
            raise PluginError(f"Two plugins register the {kind.lower()} {name!r}; disable one.")
        into[name] = obj

    return register


@attrs.define
class Registry:
    """What the loaded plugins registered: model backends, agents and session stores."""

    pm: OblixPluginManager
    models: dict[str, type[ModelBackend]] = attrs.field(factory=dict)
    agents: dict[str, type[BaseAgent]] = attrs.field(factory=dict)
    stores: dict[str, Callable[..., SessionStore]] = attrs.field(factory=dict)

    @classmethod
    def load(cls, pm: OblixPluginManager | None = None) -> Registry:
        pm = pm or build_plugin_manager()
        reg = cls(pm)
        pm.hook.oblix_register_models(register=_collector("Model backend", ModelBackend, reg.models))
        pm.hook.oblix_register_agents(register=_collector("Agent", BaseAgent, reg.agents))
        pm.hook.oblix_register_session_stores(register=_collector("Session store", None, reg.stores))
        return reg

    def make_store(self, name: str, **options: Any) -> SessionStore:
        factory = _lookup(self.stores, name, "session store", "pip install 'oblix[redis]' for redis")
        try:
            params = list(inspect.signature(factory).parameters.values())
        except (TypeError, ValueError):  # a factory without a signature: let it judge
            params = []
        accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        open_ended = not params or any(p.kind == p.VAR_KEYWORD for p in params)
        unknown = [] if open_ended else sorted(set(options) - accepted)
        if unknown:
            raise ConfigError(
                f"Unknown option(s) for the {name!r} session store: {', '.join(unknown)}. "
                f"Accepted: {', '.join(sorted(accepted)) or 'none'}."
            )
        try:
            return factory(**options)
        except TypeError as exc:
            found = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
            problem = f"unknown option {found.group(1)!r}" if found else str(exc)
            raise ConfigError(
                f"Invalid options for the {name!r} session store: {problem}. See its documentation "
                "(docs/) for the options it takes."
            ) from None

    def model_class(self, model_type: str) -> type[ModelBackend]:
        return _lookup(
            self.models, model_type, "model backend", "pip install 'oblix[llama-cpp]' for llama_cpp"
        )

    def agent_class(self, name: str) -> type[BaseAgent]:
        return _lookup(self.agents, name, "agent", "pip install oblix for the built-in agents")


def _lookup(table: dict[str, Any], name: str, kind: str, example: str) -> Any:
    """``table[name]``, or a PluginError that lists what is registered and what to do."""
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(
            f"No {kind} named {name!r} (registered: {known}). Install the plugin that provides it "
            f"(e.g. {example}), and check {LOAD_ENV} / {DISABLE_ENV}."
        ) from None
