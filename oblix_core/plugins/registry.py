"""Plugin loading: entry points of group ``oblix``, allow/deny lists, and the registry."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import Distribution, EntryPoint, entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from oblix_core.agents import BaseAgent
from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder
from oblix_core.errors import ConfigError, OblixError, PluginError
from oblix_core.models.backend import ModelBackend
from oblix_core.plugins import hookspecs
from oblix_core.plugins.contract import check_methods, check_shapes, required_methods
from oblix_core.plugins.dependencies import MissingDependency
from oblix_core.sessions.store import SessionStore

if TYPE_CHECKING:
    import click

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
    "docs": ("docs", ("local", "sqlite")),
    "pgvector": ("pgvector", ("pgvector",)),
}
#: Part kinds registered as factories and checked when built.
DOCUMENT_PARTS = frozenset({"Embedder", "Document index", "Document reader"})
#: The base class of each document part (its abstract methods are the required ones).
DOCUMENT_BASES: dict[str, type] = {
    "Embedder": Embedder,
    "Document index": DocumentIndex,
    "Document reader": DocumentReader,
}
#: Loaded beside any allow-list in OBLIX_LOAD_PLUGINS (an empty one loads nothing; only
#: OBLIX_DISABLE_PLUGINS skips it otherwise): the embedded default store.
ESSENTIAL = frozenset({"file"})
STRICT_ENV = "OBLIX_STRICT_PLUGINS"
#: Failures already logged by this process (plugins load once per client and per command).
_WARNED: set[tuple[str, str]] = set()
#: The longest failure reason ``oblix plugins`` and the log show (a plugin's error may be pages long).
REASON_CHARS = 300
#: What a third-party plugin's code may raise and still be skipped: any error, and sys.exit().
PLUGIN_FAILURES = (Exception, SystemExit)


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """Run a plugin's code (its import, its registration hooks) with what it prints sent to
    stderr: stdout holds answers and ``--json``, which a plugin's print would corrupt.

    Only on the main thread, where plugins load: ``sys.stdout`` is the whole process's, and
    two threads redirecting it at once could leave it pointing at stderr for good."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


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
    eps = list(eps)
    allow = _names_from_env(LOAD_ENV)
    deny = _names_from_env(DISABLE_ENV) or set()
    _warn_unknown_names(eps, allow or set(), deny)
    return [
        ep
        for ep in eps
        if (allow is None or ep.name in allow or (allow and ep.name in ESSENTIAL)) and ep.name not in deny
    ]


def _warn_unknown_names(eps: list[EntryPoint], allow: set[str], deny: set[str]) -> None:
    """Log once a name in the allow or deny list that no installed plugin has (a typo selects
    or disables nothing, silently), with the close matches."""
    known = sorted({ep.name for ep in eps})
    for var, names in ((LOAD_ENV, allow), (DISABLE_ENV, deny)):
        for name in sorted(names - set(known)):
            close = difflib.get_close_matches(name, known, n=2)
            meant = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            message = f"{var} names {name!r}, which no installed plugin has.{meant} See `oblix plugins`."
            if (var, message) not in _WARNED:
                _WARNED.add((var, message))
                log.warning("%s", message)


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
            log.error(
                "plugin %r (%s) failed (%s=1: the traceback follows)", name, module, STRICT_ENV, exc_info=exc
            )
            raise PluginError(f"Plugin {name!r} ({module}) failed: {_reason(exc, name)}") from exc
        elif (name, str(exc)) not in _WARNED:  # once per process, however often plugins load
            _WARNED.add((name, str(exc)))
            log.warning("plugin %r (%s) skipped: %s", name, module, _shorten(_reason(exc, name)))
        self.skipped[name] = SkippedPlugin(
            name=name,
            module=module,
            package=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            status="not installed" if missing else "failed",
            reason=str(exc) if missing else _shorten(_reason(exc, name)),
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
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    cls = plugin if isinstance(plugin, type) else type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (a pluggy error spans several)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or "(no message)"


def _shorten(text: str) -> str:
    """``text`` cut to :data:`REASON_CHARS` (``OBLIX_STRICT_PLUGINS=1`` shows all of it)."""
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1].rstrip() + "…"


def _reason(exc: BaseException, name: str) -> str:
    """What ``oblix plugins`` says of plugin ``name``'s failure, on one line: our own errors as
    they are (without a leading "Plugin 'name'", which the listing shows), others with their type."""
    text = _one_line(exc)
    if isinstance(exc, SystemExit):
        return f"SystemExit: {exc.code} (it called sys.exit(); a plugin must raise an error instead)"
    if not isinstance(exc, PluginError):
        return f"{type(exc).__name__}: {text}"
    for prefix in (f"Plugin {name!r}: ", f"Plugin {name!r} "):
        if text.startswith(prefix):
            return text.removeprefix(prefix)
    return text


def _validation_error(name: str, exc: pluggy.PluginValidationError) -> PluginError:
    """Pluggy's refusal of a hookimpl, as one line that names the hook, the argument and the fix."""
    text = str(exc)
    hook = re.search(r"for hook '(\w+)'", text)
    args = re.search(r"Argument\(s\) (\{.*?\})", text)
    spec = getattr(hookspecs, hook.group(1), None) if hook else None
    if hook and args and spec is not None:
        wanted = f"{hook.group(1)}({', '.join(inspect.signature(spec).parameters)})"
        error = PluginError(
            f"Plugin {name!r}: its {hook.group(1)} takes argument(s) {args.group(1)} that the hook does "
            f"not pass; the hook is {wanted} (docs/hooks.md): rename the argument(s)."
        )
    else:
        error = PluginError(f"Plugin {name!r} was refused by pluggy: {_one_line(exc)}")
    error.__cause__ = exc  # strict mode's traceback shows pluggy's
    return error


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A readable name for a plugin passed as an object: its module or class, never its id()."""
    base = _module_name(plugin)
    name, n = base, 1
    while pm.has_plugin(name):
        n += 1
        name = f"{base}#{n}"
    return name


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

    ``OBLIX_LOAD_PLUGINS`` (comma-separated entry-point names, plus the file store; empty
    loads none at all) and ``OBLIX_DISABLE_PLUGINS`` select which entry points load. A plugin
    whose optional package is missing, or that fails to import, is skipped and recorded
    in ``pm.skipped`` (``oblix plugins`` shows it); ``OBLIX_STRICT_PLUGINS=1`` makes a
    failure an error. Plugins passed in ``extra_plugins`` are the caller's own: an unknown
    hook in one of them raises :class:`PluginError`.
    """
    from oblix_core.request import routing

    pm = OblixPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(routing, name="oblix_core.routing")
    for ep in _first_party_entry_points(_selected(entry_points(group=ENTRY_POINT_GROUP))):
        if pm.has_plugin(ep.name) or ep.name in pm.skipped:
            _name_taken(pm, ep)  # another package's, or the same one visible twice
            continue
        try:
            with plugin_code():
                plugin = ep.load()
        except PLUGIN_FAILURES as exc:
            pm.skip(ep.name, exc, module=ep.value, dist=ep.dist)
            continue
        _register_entry_point(pm, ep, plugin)
    for plugin in extra_plugins:
        name = _plugin_name(pm, plugin)
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # the caller's own plugin: say what to fix
            raise _validation_error(name, exc) from None
        except ValueError:  # pluggy: this object is already registered
            raise _registered_twice(pm, name, plugin) from None
        problem = _hooks_problem(pm, name, plugin)
        if problem is not None:
            raise problem
    _check_hooks(pm)
    return pm


def _dist_name(dist: Distribution | None) -> str | None:
    """A distribution's name, normalised (``Oblix_Foo`` and ``oblix-foo`` are one)."""
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() if dist is not None else None


def _first_party_entry_points(eps: Iterable[EntryPoint]) -> list[EntryPoint]:
    """``eps`` with Oblix's own first: an entry-point name another package also uses stays Oblix's."""
    return sorted(eps, key=lambda ep: 0 if _dist_name(ep.dist) == "oblix" else 1)


def _name_taken(pm: OblixPluginManager, ep: EntryPoint) -> None:
    """``ep``'s name is already a plugin's: recorded as a failure when that plugin comes from
    another package (the first keeps the name), ignored when it is the same package seen twice."""
    if ep.name in pm.skipped:
        held = pm.skipped[ep.name].package
        held = re.sub(r"[-_.]+", "-", held).lower() if held else None
    else:
        held = _dist_name(pm.distributions.get(ep.name)) or "Oblix's core"
    mine = _dist_name(ep.dist)
    if held == mine:
        return
    pm.skip(
        f"{ep.name} ({mine or ep.value})",
        PluginError(
            f"Plugin {ep.name!r} of the package {mine!r}: the entry-point name {ep.name!r} is already the "
            f"plugin of the package {held!r}, which keeps it; rename the entry point in the package's "
            "[project.entry-points.oblix] (names must be unique)."
        ),
        module=ep.value,
        dist=ep.dist,
    )


def _register_entry_point(pm: OblixPluginManager, ep: EntryPoint, plugin: object) -> None:
    """Register an entry point's plugin with pluggy; a refusal (a hookimpl whose arguments do
    not match the hookspec, the same module twice) skips it and says why."""
    try:
        pm.register(plugin, name=ep.name)
    except pluggy.PluginValidationError as exc:
        pm.skip(ep.name, _validation_error(ep.name, exc), module=ep.value, dist=ep.dist)
        return
    except ValueError:  # pluggy: this plugin object is already registered under another name
        pm.skip(ep.name, _registered_twice(pm, ep.name, plugin), module=ep.value, dist=ep.dist)
        return
    if ep.dist is not None:
        pm.distributions[ep.name] = ep.dist
    problem = _hooks_problem(pm, ep.name, plugin)
    if problem is not None:
        pm.skip(ep.name, problem, module=ep.value, dist=ep.dist)


def _registered_twice(pm: OblixPluginManager, name: str, plugin: object) -> PluginError:
    """Pluggy's refusal of an object already registered, as one line naming both names."""
    other = pm.get_name(plugin)
    return PluginError(
        f"Plugin {name!r} is the object ({_module_name(plugin)}) already loaded as the plugin {other!r}: "
        "register each plugin once, and point each entry point at its own module or object."
    )


def _hooks_problem(pm: OblixPluginManager, name: str, plugin: object) -> PluginError | None:
    """What makes ``plugin`` do nothing: a function named like a hook but not marked ``@hookimpl``
    (pluggy ignores it), a hook implementation written ``async def`` (its coroutine would never
    run), or no hook implementation at all."""
    unmarked = []
    for hook in dir(hookspecs):
        if hook.startswith("oblix_"):
            try:
                found = inspect.getattr_static(plugin, hook)
            except AttributeError:
                continue
            if callable(found) and getattr(found, f"{ENTRY_POINT_GROUP}_impl", None) is None:
                unmarked.append(hook)
    if unmarked:
        return PluginError(
            f"Plugin {name!r}: {', '.join(unmarked)} {'is' if len(unmarked) == 1 else 'are'} not marked "
            "@hookimpl, so Oblix never calls it: decorate it (from oblix.plugin import hookimpl)."
        )
    callers = pm.get_hookcallers(plugin) or []
    asynchronous = sorted(
        impl.function.__name__
        for caller in callers
        for impl in caller.get_hookimpls()
        if impl.plugin is plugin
        and (inspect.iscoroutinefunction(impl.function) or inspect.isasyncgenfunction(impl.function))
    )
    if asynchronous:
        return PluginError(
            f"Plugin {name!r}: {', '.join(asynchronous)} {'is' if len(asynchronous) == 1 else 'are'} async, "
            "but Oblix calls hooks synchronously (a coroutine would never run): make it a plain def."
        )
    if not callers:
        return PluginError(
            f"Plugin {name!r} ({_module_name(plugin)}) implements no hook: mark its functions @hookimpl "
            "and name them after a hook (docs/hooks.md)."
        )
    return None


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


#: What each kind of part must implement (checked when it is registered).
REQUIRED: dict[str, tuple[type, tuple[str, ...]]] = {
    "Model backend": (ModelBackend, ("generate",)),
    "Agent": (BaseAgent, required_methods(BaseAgent)),
    "Session store": (SessionStore, required_methods(SessionStore)),
}
#: Methods whose shape is checked as well, per kind: (async generators, plain functions).
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Model backend": (("generate", "stream"), ("count_tokens", "count_message_tokens")),
    "Agent": ((), ("sample",)),
    "Session store": ((), REQUIRED["Session store"][1]),
    **{kind: ((), required_methods(base)) for kind, base in DOCUMENT_BASES.items()},
}


def check_part_methods(kind: str, name: str, part: Any, base: type, required: Iterable[str]) -> None:
    """Refuse ``part`` (a class or an instance) lacking a required method or with one of the wrong shape."""
    check_methods(kind, name, part, required, base)
    streams, plain = SHAPES[kind]
    check_shapes(kind, name, part, streams=streams, plain=plain)


def _check_part(kind: str, name: str, obj: Any) -> None:
    """Refuse ``obj`` unless it is the right kind of part with every required method."""
    if kind in DOCUMENT_PARTS:  # factories: a class is checked now, what a function builds when built
        if not callable(obj):
            raise PluginError(f"{kind} {name!r} must be callable (a class or a factory), got {obj!r}.")
        base = DOCUMENT_BASES[kind]
        if isinstance(obj, type) and issubclass(obj, base):
            check_part_methods(kind, name, obj, base, required_methods(base))
        return
    base, required = REQUIRED[kind]
    if kind == "Session store":  # a factory: a class is checked now, a function when it has built one
        if not callable(obj):
            raise PluginError(f"{kind} {name!r} must be callable (a class or a factory), got {obj!r}.")
        if isinstance(obj, type) and issubclass(obj, SessionStore):
            check_part_methods(kind, name, obj, base, required)
        return
    if isinstance(obj, base):
        raise PluginError(
            f"{kind} {name!r} is an instance of {_module_name(obj)}: register the class itself "
            f"(register({name!r}, {type(obj).__name__})); Oblix builds the instances."
        )
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"{kind} {name!r} must be a subclass of {base.__name__}, got {obj!r}.")
    check_part_methods(kind, name, obj, base, required)


@attrs.define
class _Collector:
    """The ``register`` callback handed to one plugin's registration hook for one kind of part."""

    kind: str
    plugin: str
    into: dict[str, Any]
    owners: dict[tuple[str, str], str]
    added: list[tuple[dict[str, Any], str]]

    def __call__(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name.strip():
            raise PluginError(
                f"Plugin {self.plugin!r} registers a {self.kind.lower()} named {name!r}: a name must be a "
                f"non-empty string, e.g. register('my-{self.kind.split()[-1].lower()}', ...)."
            )
        name = str(name)
        _check_part(self.kind, name, obj)
        owner = self.owners.get((self.kind, name))
        if name in self.into and owner != self.plugin:
            if self.into[name] is obj:  # the same part again (imported from its plugin): it stays
                return  # the first plugin's, and is not dropped if this plugin fails
            raise PluginError(
                f"Plugin {self.plugin!r} registers the {self.kind.lower()} {name!r}, which plugin "
                f"{owner!r} already registers; keep one: {DISABLE_ENV}={self.plugin} (or {owner})."
            )
        self.into[name] = obj
        self.owners[(self.kind, name)] = self.plugin
        self.added.append((self.into, name))


def _first_party_first(pm: OblixPluginManager, impls: Iterable[pluggy.HookImpl]) -> list[pluggy.HookImpl]:
    """``impls`` in registration order, Oblix's own plugins first: a name another plugin also
    registers stays with the first-party plugin, and the other plugin is the one reported."""

    def rank(impl: pluggy.HookImpl) -> int:
        dist = pm.distributions.get(impl.plugin_name)
        return 0 if dist is not None and dist.metadata["Name"] == "oblix" else 1

    return sorted(impls, key=rank)


@attrs.define
class Registry:
    """What the loaded plugins registered: model backends, agents and session stores."""

    pm: OblixPluginManager
    models: dict[str, type[ModelBackend]] = attrs.field(factory=dict)
    agents: dict[str, type[BaseAgent]] = attrs.field(factory=dict)
    stores: dict[str, Callable[..., SessionStore]] = attrs.field(factory=dict)
    #: Documents: embedder, index and reader factories (``oblix_core.documents``).
    embedders: dict[str, Callable[..., Any]] = attrs.field(factory=dict)
    document_indexes: dict[str, Callable[..., Any]] = attrs.field(factory=dict)
    document_readers: dict[str, Callable[..., Any]] = attrs.field(factory=dict)
    #: (kind, name) -> the plugin that registered it (for messages).
    owners: dict[tuple[str, str], str] = attrs.field(factory=dict)
    #: The context every part is built in: a client sets it so that ``oblix_home()`` is its home
    #: in every constructor (stores, backends, agents, embedders, indexes, readers).
    building: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    @classmethod
    def load(cls, pm: OblixPluginManager | None = None) -> Registry:
        """Run the registration hooks, each plugin on its own: one that raises, registers a part
        without a required method or a name another plugin has, is skipped (recorded in
        ``pm.skipped``) and what it registered is dropped; the caller's own plugins raise."""
        pm = pm or build_plugin_manager()
        reg = cls(pm)
        hooks = (
            (pm.hook.oblix_register_models, "Model backend", reg.models),
            (pm.hook.oblix_register_agents, "Agent", reg.agents),
            (pm.hook.oblix_register_session_stores, "Session store", reg.stores),
            (pm.hook.oblix_register_embedders, "Embedder", reg.embedders),
            (pm.hook.oblix_register_document_indexes, "Document index", reg.document_indexes),
            (pm.hook.oblix_register_document_readers, "Document reader", reg.document_readers),
        )
        by_plugin: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for caller, kind, table in hooks:
            for impl in _first_party_first(pm, reversed(caller.get_hookimpls())):
                if impl.plugin_name in pm.skipped:
                    continue
                added = by_plugin.setdefault(impl.plugin_name, [])
                try:
                    with plugin_code():
                        impl.function(register=_Collector(kind, impl.plugin_name, table, reg.owners, added))
                except PLUGIN_FAILURES as exc:
                    if impl.plugin_name not in pm.distributions:
                        raise
                    for into, name in added:
                        into.pop(name, None)
                    pm.skip(impl.plugin_name, exc)
        return reg

    def owner(self, kind: str, name: str) -> str:
        """The plugin that registered ``name`` (``"?"`` if none did)."""
        return self.owners.get((kind, name), "?")

    def make_store(self, name: str, **options: Any) -> SessionStore:
        """Build the session store ``name`` with ``options`` (checked against its factory's signature).

        A wrong option is a :class:`ConfigError` naming it; the factory failing for another
        reason is a :class:`PluginError` naming the plugin (see :meth:`construct`).
        """
        factory = self._lookup(self.stores, name, "session store")
        _check_options(factory, options, f"the {name!r} session store")
        store = self.construct("Session store", name, factory, **options)
        if not isinstance(store, SessionStore):
            raise PluginError(
                f"The session store factory {name!r} (plugin {self.owner('Session store', name)!r}) "
                f"returned {type(store).__name__}, not a SessionStore."
            )
        check_part_methods("Session store", name, store, SessionStore, REQUIRED["Session store"][1])
        return store

    def make_model(self, model_type: str, model_name: str, **options: Any) -> ModelBackend:
        """Build a backend of ``model_type`` (``cls(model_name, **options)``), failures explained."""
        cls = self.model_class(model_type)
        return self.construct("Model backend", model_type, cls, model_name, **options)

    def make_agent(self, name: str, **options: Any) -> BaseAgent:
        """Build the agent ``name`` with ``options`` (checked against its signature), failures explained."""
        cls = self.agent_class(name)
        _check_options(cls, options, f"the {name!r} agent")
        return self.construct("Agent", name, cls, **options)

    def construct(self, kind: str, name: str, factory: Callable[..., Any], *args: Any, **options: Any) -> Any:
        """``factory(*args, **options)``; an error that is not an :class:`OblixError` (a bug in the
        plugin, a missing file) becomes a :class:`PluginError` naming the part and its plugin."""
        try:
            with self.building():  # not plugin_code(): parts are built on any thread
                return factory(*args, **options)
        except OblixError:
            raise
        except PLUGIN_FAILURES as exc:  # sys.exit() in a constructor included
            if strict():
                log.error(
                    "%s %r failed to start (%s=1: the traceback follows)",
                    kind,
                    name,
                    STRICT_ENV,
                    exc_info=exc,
                )
            raise PluginError(
                f"The {kind.lower()} {name!r} (plugin {self.owner(kind, name)!r}) failed to start: "
                f"{type(exc).__name__}: {_one_line(exc)}. Check its options; if they are right, report it "
                f"to the plugin's author ({STRICT_ENV}=1 shows the traceback)."
            ) from exc

    def make_readers(self) -> dict[str, DocumentReader]:
        """One instance of every registered document reader, by the suffix it reads. A reader
        that fails to start (or is not a :class:`DocumentReader`) loses its file types, not
        every document: it is logged once and left out (raised under ``OBLIX_STRICT_PLUGINS=1``)."""
        readers: dict[str, DocumentReader] = {}
        for name, factory in self.document_readers.items():
            try:
                reader = self.construct("Document reader", name, factory)
                if not isinstance(reader, DocumentReader):
                    raise PluginError(
                        f"The document reader {name!r} (plugin {self.owner('Document reader', name)!r}) "
                        f"built {type(reader).__name__}, not a DocumentReader."
                    )
                suffixes = [str(suffix).lower() for suffix in reader.suffixes]
            except (OblixError, AttributeError, TypeError) as exc:
                if strict():
                    raise
                if ("Document reader", str(exc)) not in _WARNED:
                    _WARNED.add(("Document reader", str(exc)))
                    log.warning("document reader %r left out: %s", name, _one_line(exc))
                continue
            readers.update(dict.fromkeys(suffixes, reader))
        return readers

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
        close = difflib.get_close_matches(name, list(table), n=3)
        meant = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise PluginError(
            f"No {kind} named {name!r}: not installed, no plugin provides {kind} {name!r} "
            f"(registered: {known}).{meant} Install the plugin that provides it, and check "
            f"{LOAD_ENV} / {DISABLE_ENV} (`oblix plugins` lists what loaded and what did not)."
        )


def _check_options(factory: Callable[..., Any], options: dict[str, Any], what: str) -> None:
    """Refuse ``options`` that ``factory``'s signature does not take, or that leave a required one out."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a factory without a signature: let it judge
        return
    params = list(signature.parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    unknown = sorted(set(options) - accepted)
    if unknown:
        close = {u: difflib.get_close_matches(u, list(accepted), n=1) for u in unknown}
        meant = "".join(f" ({u}: did you mean {c[0]!r}?)" for u, c in close.items() if c)
        raise ConfigError(
            f"Unknown option(s) for {what}: {', '.join(unknown)}.{meant} "
            f"Accepted: {', '.join(sorted(accepted)) or 'none'}."
        )
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(
            f"Options for {what}: {exc}. See its documentation for the options it takes."
        ) from None


#: A command's place in the tree: its names from the root (``("sessions", "list")``).
CommandPath = tuple[str, ...]


#: The attribute naming the plugin that added a command (the built-in groups are shared by
#: every root group a process builds, so a second build finds the first one's commands).
OWNER_ATTRIBUTE = "oblix_plugin"


def _command_tree(group: Any, path: CommandPath = ()) -> dict[CommandPath, Any]:
    """Every command under ``group`` (a click group), subcommands of its groups included, by path."""
    found: dict[CommandPath, Any] = {}
    for name, command in group.commands.items():
        found[(*path, name)] = command
        if isinstance(getattr(command, "commands", None), dict):
            found.update(_command_tree(command, (*path, name)))
    return found


def _groups(group: Any) -> list[tuple[Any, dict[str, Any]]]:
    """``group`` and every group under it, each with a copy of its commands (to restore them)."""
    found = [(group, dict(group.commands))]
    for command in group.commands.values():
        if isinstance(getattr(command, "commands", None), dict):
            found += _groups(command)
    return found


def register_commands(pm: OblixPluginManager, group: click.Group) -> None:
    """Each plugin's ``oblix_register_commands`` on its own, Oblix's own plugins first.

    A plugin that raises (or calls ``sys.exit()``) is skipped and the commands it added
    are removed; one that replaces or removes a command Oblix or an earlier plugin has
    (``oblix plugins``, ``oblix sessions list``...) is skipped and that command kept. A plugin
    may add commands anywhere, subcommands of Oblix's groups included.
    """
    owners = {path: getattr(c, OWNER_ATTRIBUTE, "Oblix itself") for path, c in _command_tree(group).items()}
    hooks = _first_party_first(pm, reversed(pm.hook.oblix_register_commands.get_hookimpls()))
    for impl in hooks:
        if impl.plugin_name in pm.skipped:
            continue
        before, groups = _command_tree(group), _groups(group)
        try:
            with plugin_code():
                impl.function(cli=group)
            after = _command_tree(group)
            for path, command in before.items():
                if after.get(path) is not command and owners[path] != impl.plugin_name:
                    who = owners[path] if owners[path] == "Oblix itself" else f"the plugin {owners[path]!r}"
                    raise PluginError(
                        f"Plugin {impl.plugin_name!r} replaces the command {path[-1]!r} (`oblix "
                        f"{' '.join(path)}`), which {who} provides: give its command another name "
                        "(a plugin may add commands, never replace one)."
                    )
        except PLUGIN_FAILURES as exc:  # a failing plugin loses its commands, not the command line
            for each, commands in groups:
                each.commands.clear()
                each.commands.update(commands)
            pm.skip(impl.plugin_name, exc)
            continue
        for path, command in after.items():
            if before.get(path) is not command:  # added (or replaced in its own place) by this plugin
                owners[path] = impl.plugin_name
                setattr(command, OWNER_ATTRIBUTE, impl.plugin_name)
