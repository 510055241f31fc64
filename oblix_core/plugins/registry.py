"""Plugin loading: entry points of group ``oblix``, allow/deny lists, and the registry."""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable
from importlib.metadata import Distribution, EntryPoint, entry_points
from types import ModuleType
from typing import Any

import attrs
import pluggy

from oblix_core.agents import BaseAgent
from oblix_core.errors import ConfigError, PluginError
from oblix_core.models.backend import ModelBackend
from oblix_core.plugins import hookspecs
from oblix_core.plugins.dependencies import MissingDependency
from oblix_core.sessions.store import SessionStore

ENTRY_POINT_GROUP = "oblix"
LOAD_ENV = "OBLIX_LOAD_PLUGINS"
DISABLE_ENV = "OBLIX_DISABLE_PLUGINS"

log = logging.getLogger(__name__)


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


#: First-party plugins: the extra that installs each one's optional packages, and the names
#: it registers when they differ from its own (for "not installed" errors).
FIRST_PARTY: dict[str, tuple[str, tuple[str, ...]]] = {
    "llama_cpp": ("llama-cpp", ("llama_cpp",)),
    "openai": ("openai", ("openai",)),
    "ollama": ("ollama", ("ollama",)),
    "anthropic": ("anthropic", ("claude", "anthropic")),
    "redis": ("redis", ("redis",)),
    "s3": ("s3", ("s3",)),
    "server": ("server", ("server",)),
}
#: Loaded whatever OBLIX_LOAD_PLUGINS says (only OBLIX_DISABLE_PLUGINS skips it): the
#: embedded default store.
ESSENTIAL = frozenset({"file"})
STRICT_ENV = "OBLIX_STRICT_PLUGINS"
#: Failures already logged by this process (plugins load once per client and per command).
_WARNED: set[tuple[str, str]] = set()


@attrs.frozen
class SkippedPlugin:
    """A plugin that did not load: its package is not installed, or it failed."""

    name: str
    module: str
    package: str | None
    version: str | None
    #: "not installed" (an optional package is missing) or "failed" (it raised).
    status: str
    reason: str
    #: The command that installs what it lacks (for "not installed").
    install: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _names_from_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _selected(eps: Iterable[EntryPoint]) -> list[EntryPoint]:
    allow = _names_from_env(LOAD_ENV)
    deny = _names_from_env(DISABLE_ENV) or set()
    return [
        ep
        for ep in eps
        if (allow is None or ep.name in allow or ep.name in ESSENTIAL) and ep.name not in deny
    ]


def strict() -> bool:
    """``OBLIX_STRICT_PLUGINS=1``: a plugin that fails raises instead of being skipped (for authors)."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


class OblixPluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each entry point came from and what was skipped."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.distributions: dict[str, Distribution] = {}
        self.skipped: dict[str, SkippedPlugin] = {}

    def skip(
        self, name: str, exc: BaseException, *, module: str = "", dist: Distribution | None = None
    ) -> None:
        """Record ``name`` as not loaded (logged; raised in strict mode unless merely not installed)."""
        plugin = self.get_plugin(name)
        if plugin is not None:
            module = module or _module_name(plugin)
            self.unregister(name=name)
        dist = dist or self.distributions.pop(name, None)
        missing = isinstance(exc, MissingDependency) or (
            isinstance(exc, ModuleNotFoundError) and name in FIRST_PARTY and dist is not None
        )
        install = None
        if missing:
            extra = FIRST_PARTY.get(name, (None,))[0]
            install = exc.install if isinstance(exc, MissingDependency) else f"pip install 'oblix[{extra}]'"
        elif strict():
            raise PluginError(f"Plugin {name!r} ({module}) failed: {exc}") from exc
        elif (name, str(exc)) not in _WARNED:  # once per process, however often plugins load
            _WARNED.add((name, str(exc)))
            log.warning("plugin %r (%s) skipped: %s: %s", name, module, type(exc).__name__, exc)
        self.skipped[name] = SkippedPlugin(
            name=name,
            module=module,
            package=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            status="not installed" if missing else "failed",
            reason=str(exc) if missing else f"{type(exc).__name__}: {exc}",
            install=install,
        )

    def missing_hint(self, name: str) -> str | None:
        """Why the thing named ``name`` (a model type, store...) is not here, if a skipped plugin has it."""
        for skipped in self.skipped.values():
            provides = {skipped.name, *FIRST_PARTY.get(skipped.name, ("", ()))[1]}
            if name in provides:
                if skipped.install:
                    return f"{name!r} needs {skipped.install} (not installed: {skipped.reason})."
                return f"{name!r} comes from the plugin {skipped.name!r}, which failed: {skipped.reason}."
        return None


def _module_name(plugin: object) -> str:
    return plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__qualname__


def _check_hooks(pm: OblixPluginManager) -> None:
    """Reject implementations of hooks that do not exist (a typo would silently do nothing)."""
    for hook_name in dir(pm.hook):
        caller = getattr(pm.hook, hook_name)
        if hook_name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            error = PluginError(
                f"Plugin {impl.plugin_name!r} implements an unknown hook {hook_name!r}. Hook names "
                "must match oblix_core.plugins.hookspecs exactly (see docs/hooks.md)."
            )
            if impl.plugin_name in pm.distributions:  # installed by entry point: skip it, say why
                pm.skip(impl.plugin_name, error)
            else:
                raise error


def build_plugin_manager(extra_plugins: Iterable[object] = ()) -> OblixPluginManager:
    """A plugin manager with the core's hooks, the selected entry points and ``extra_plugins``.

    ``OBLIX_LOAD_PLUGINS`` (comma-separated entry-point names; empty loads none but the
    file store) and ``OBLIX_DISABLE_PLUGINS`` select which entry points load. A plugin
    whose optional package is missing, or that fails to import, is skipped and recorded
    in ``pm.skipped`` (``oblix plugins`` shows it); ``OBLIX_STRICT_PLUGINS=1`` makes a
    failure an error. Plugins passed in ``extra_plugins`` are the caller's own: an unknown
    hook in one of them raises :class:`PluginError`.
    """
    from oblix_core.request import routing

    pm = OblixPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(routing, name="oblix_core.routing")
    for ep in _selected(entry_points(group=ENTRY_POINT_GROUP)):
        if pm.has_plugin(ep.name) or ep.name in pm.skipped:  # one distribution visible twice
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            pm.skip(ep.name, exc, module=ep.value, dist=ep.dist)
            continue
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            pm.distributions[ep.name] = ep.dist
    for plugin in extra_plugins:
        pm.register(plugin)
    _check_hooks(pm)
    return pm


def plugin_infos(pm: OblixPluginManager) -> list[PluginInfo]:
    """Describe every plugin registered in ``pm`` (the core's own routing included)."""
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = pm.distributions.get(name)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ()))
        infos.append(
            PluginInfo(
                name=name,
                module=_module_name(plugin),
                package=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                hooks=hooks,
            )
        )
    return infos


def _collector(
    kind: str, base: type | None, into: dict[str, Any], added: list[tuple[dict[str, Any], str]]
) -> Callable[[str, Any], None]:
    def register(name: str, obj: Any) -> None:
        name = str(name)
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{kind} {name!r} must be a subclass of {base.__name__}, got {obj!r}.")
        if base is None and not callable(obj):
            raise PluginError(f"{kind} {name!r} must be callable, got {obj!r}.")
        if name in into and into[name] is not obj:
            raise PluginError(f"Two plugins register the {kind.lower()} {name!r}; disable one.")
        into[name] = obj
        added.append((into, name))

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
        """Run the registration hooks, each plugin on its own: one that raises is skipped
        (recorded in ``pm.skipped``) and what it registered is dropped; the caller's own
        plugins (not from entry points) raise."""
        pm = pm or build_plugin_manager()
        reg = cls(pm)
        hooks = (
            (pm.hook.oblix_register_models, "Model backend", ModelBackend, reg.models),
            (pm.hook.oblix_register_agents, "Agent", BaseAgent, reg.agents),
            (pm.hook.oblix_register_session_stores, "Session store", None, reg.stores),
        )
        by_plugin: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for caller, kind, base, table in hooks:
            for impl in reversed(caller.get_hookimpls()):  # pluggy's order: last registered first
                if impl.plugin_name in pm.skipped:
                    continue
                added = by_plugin.setdefault(impl.plugin_name, [])
                try:
                    impl.function(register=_collector(kind, base, table, added))
                except Exception as exc:
                    if impl.plugin_name not in pm.distributions:
                        raise
                    for into, name in added:
                        into.pop(name, None)
                    pm.skip(impl.plugin_name, exc)
        return reg

    def make_store(self, name: str, **options: Any) -> SessionStore:
        factory = self._lookup(self.stores, name, "session store")
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
        return self._lookup(self.models, model_type, "model backend")

    def agent_class(self, name: str) -> type[BaseAgent]:
        return self._lookup(self.agents, name, "agent")

    def _lookup(self, table: dict[str, Any], name: str, kind: str) -> Any:
        """``table[name]``, or a PluginError that says what is missing and what to do."""
        try:
            return table[name]
        except KeyError:
            pass
        known = ", ".join(sorted(table)) or "none"
        hint = self.pm.missing_hint(name)
        if hint:
            raise PluginError(f"No {kind} named {name!r}: {hint} Registered: {known}.")
        raise PluginError(
            f"No {kind} named {name!r} (registered: {known}). Install the plugin that provides it, "
            f"and check {LOAD_ENV} / {DISABLE_ENV} (`oblix plugins` lists what loaded and what did not)."
        )
