"""``OblixClient``: hook models and agents, manage sessions, execute prompts."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import anyio

from oblix_core.agents import AgentCheck, BaseAgent
from oblix_core.compat import Compat012, print_metrics
from oblix_core.config.notices import notice_once
from oblix_core.config.settings import (
    Config,
    building_parts_in,
    default_model_entries,
    load_config,
    model_arguments,
    oblix_home,
)
from oblix_core.documents.api import DocumentsAPI
from oblix_core.errors import ConfigError, OblixError, PluginError
from oblix_core.models.backend import ChatMessage, ModelBackend, ModelType
from oblix_core.plugins.registry import Registry, build_plugin_manager, check_part_methods
from oblix_core.request.context import Request
from oblix_core.request.conversation import ResponseStream
from oblix_core.request.engine import Engine
from oblix_core.request.execution import CircuitBreaker, ExecutionSettings, Executor
from oblix_core.request.idempotency import check_key, request_id_for
from oblix_core.request.options import candidates_for, check_request_options
from oblix_core.request.routing import PREFERENCES
from oblix_core.sessions.api import SessionsAPI
from oblix_core.sessions.idempotency import FileIdempotencyRecords
from oblix_core.sessions.records import ROLES, random_hex, validate_session_id
from oblix_core.sessions.store import SessionStore
from oblix_core.usage.ledger import Pricing, UsageLedger, parse_since, reference_model, usage_report
from oblix_core.usage.sqlite import ledger_for
from oblix_core.validation import check_json, check_text

log = logging.getLogger(__name__)

#: ``execute``/``stream`` keyword options that steer Oblix rather than the model.
ROUTING_OPTIONS = (
    "model",
    "local_only",
    "preference",
    "fallback",
    "system",
    "history",
    "store",
    "idempotency_key",
)


def _check_generation(temperature: Any, max_tokens: Any, request_id: Any) -> None:
    """Clear errors for the generation parameters of ``execute``/``stream``."""
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2
    ):
        raise OblixError(f"temperature must be a number from 0 to 2, got {temperature!r}.")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 < max_tokens <= 10_000_000
    ):
        raise OblixError(f"max_tokens must be a positive integer, got {max_tokens!r}.")
    if request_id is not None and (not isinstance(request_id, str) or not request_id.strip()):
        raise OblixError(f"request_id must be a non-empty string, got {request_id!r}.")
    if isinstance(request_id, str):
        check_text(request_id, "request_id")


def _history_message(item: Any, i: int) -> ChatMessage:
    """One ``history=`` entry: a ChatMessage, or a dict in OpenAI's message shape."""
    if isinstance(item, ChatMessage):
        item = item.to_dict()
    if not isinstance(item, dict) or item.get("role") not in (*ROLES, "tool"):
        raise OblixError(f"history[{i}] must be a message with a role in {(*ROLES, 'tool')}.")
    content = item.get("content")
    content = "" if content is None and item["role"] == "assistant" else content
    if not isinstance(content, str):
        raise OblixError(f"history[{i}] must have string content.")
    calls = check_json(item.get("tool_calls"), f"history[{i}].tool_calls")
    if calls is not None and (not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls)):
        raise OblixError(f"history[{i}].tool_calls must be a list of tool calls.")
    call_id = item.get("tool_call_id")
    if item["role"] == "tool" and not isinstance(call_id, str):
        raise OblixError(f"history[{i}] is a tool result: it needs the tool_call_id it answers.")
    return ChatMessage(
        item["role"], check_text(content, f"history[{i}]"), tuple(calls) if calls else None, call_id
    )


def _history(raw: Any, store: bool) -> tuple[ChatMessage, ...] | None:
    """``history=`` as chat messages (tool calls and results only when nothing is stored)."""
    if raw is None:
        return None
    if not isinstance(raw, list | tuple):
        raise OblixError("history must be a list of {'role': ..., 'content': ...} messages.")
    messages = tuple(_history_message(item, i) for i, item in enumerate(raw))
    if store and any(m.role == "tool" or m.tool_calls for m in messages):
        raise OblixError(
            "history with tool calls or tool results can only be sent with store=False: sessions "
            "store user, assistant and system messages."
        )
    return messages


async def _warm(model: ModelBackend) -> None:
    try:
        await model.prepare()
    except OblixError as exc:
        log.warning("%s could not be prepared: %s", model.model_id, exc)


class OblixClient(SessionsAPI, Compat012, DocumentsAPI):
    """The Oblix SDK entry point.

    ``OblixClient()`` uses ``$OBLIX_HOME/config.toml`` when present and the file session
    store under ``$OBLIX_HOME/sessions``. Any one hooked model is enough to execute.
    One client serves many concurrent requests and sessions; the only mutable state it
    shares between calls is the set of hooked models and agents and the *current*
    session chosen with :meth:`use_session`.
    """

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        session_store: str | SessionStore | None = None,
        store_options: dict[str, Any] | None = None,
        preference: str | None = None,
        execution: ExecutionSettings | None = None,
        plugins: Iterable[object] = (),
    ) -> None:
        self.home = Path(home) if home is not None else oblix_home()
        self.config: Config = load_config(self.home)
        self.registry = Registry.load(build_plugin_manager(plugins))
        self.registry.building = functools.partial(building_parts_in, self.home)  # oblix_home() in parts
        self.plugin_manager = self.registry.pm
        self.store = self._make_store(session_store, store_options)
        settings = execution or self.config.execution
        self.engine = Engine(
            store=self.store,
            hooks=self.plugin_manager.hook,
            executor=Executor(
                settings, CircuitBreaker.for_home(settings, self.home, self.store.shared_health())
            ),
            preference=preference or self.config.preference,
            pricing=Pricing.from_entries(self.config.models),
            ledger=ledger_for(self.store, self.home),
            budgets=self.config.budgets,
            idempotency=self.store.idempotency_records() or FileIdempotencyRecords(self.home / "idempotency"),
        )
        self._current_session_id: str | None = None

    def _make_store(self, store: str | SessionStore | None, options: dict[str, Any] | None) -> SessionStore:
        if isinstance(store, SessionStore):
            return store
        name = store or self.config.store
        options = dict(options if options is not None else self.config.store_options)
        if name == "file":
            options.setdefault("root", self.home / "sessions")
        with building_parts_in(self.home):  # a plugin's store finds this home with oblix_home()
            return self.registry.make_store(name, **options)

    @property
    def executor(self) -> Executor:
        return self.engine.executor

    @property
    def preference(self) -> str:
        """The routing preference of requests that do not set one (``local-first``, ``cloud-first``)."""
        return self.engine.preference

    @preference.setter
    def preference(self, value: str) -> None:
        if value not in PREFERENCES:
            raise ConfigError(f"Unknown routing preference {value!r}; use one of {', '.join(PREFERENCES)}.")
        self.engine.preference = value

    # -- models and agents -------------------------------------------------------------

    @property
    def models(self) -> list[ModelBackend]:
        """Hooked models, in the order they were hooked."""
        return self.engine.model_snapshot()

    async def warm_up(self) -> None:
        """Make every hooked model ready now (load in-process weights), e.g. before serving.

        Models otherwise load on first use; a model that cannot load is left to fail its
        first request (and so to fall back) rather than failing here.
        """
        async with anyio.create_task_group() as tg:
            for model in self.models:
                tg.start_soon(_warm, model)

    def resolve_model(self, name: str, *, what: str = "Model") -> str:
        """The hooked model's id for an id, an ``[aliases]`` name or a bare, unambiguous model
        name (``"fast"``, ``"gemma-3-270m"`` -> ``"llama_cpp:gemma-3-270m"``); ``what`` names
        the value in the error (``--model`` for the CLI)."""
        target = self.config.aliases.get(name, name)
        hooked = [m.model_id for m in self.models]
        if target in hooked:
            return target
        matches = [m.model_id for m in self.models if m.model_name == target]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise OblixError(f"{what} {name} is ambiguous: {', '.join(matches)}. Give the full id.")
        alias = f" (alias of {target})" if target != name else ""
        raise OblixError(
            f"{what} {name}{alias} is not one of the available models ({', '.join(hooked) or 'none'}). "
            "Add it to config.toml as a [[models]] entry, or see `oblix models`."
        )

    def find_model(self, model_id: str) -> ModelBackend | None:
        """The hooked model with this id (``"<type>:<name>"``), or ``None``."""
        return self.engine.models.get(model_id)

    def model_health(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Each hooked model's health, by id.

        ``status`` is ``"ready"``, ``"warming"`` (loading; it will answer, later),
        ``"cooling"`` (taken out of service after failures: ``reason``, ``returns`` and
        ``seconds_left_estimate`` say why and when it comes back) or ``"not started"``.
        ``available`` says whether routing would try it now. ``refresh=True`` first reads
        what other processes recorded (``$OBLIX_HOME/health.json``, or the store's shared
        health) instead of this process's view only.
        """
        breaker = self.executor.breaker
        if refresh:
            breaker.watch(self.models)
            breaker.sync()
        health: dict[str, dict[str, Any]] = {}
        for model in self.models:
            cooling = breaker.describe(model.model_id)
            status = (
                "not started"
                if not model.started
                else "cooling"
                if cooling
                else "warming"
                if model.warming
                else "ready"
            )
            entry = {"status": status, "available": model.started and cooling is None, "busy": model.busy}
            health[model.model_id] = entry | (cooling or {})
        return health

    def reset_model_health(self, model_id: str | None = None) -> list[str]:
        """Put a cooling model (or every model) back in service now, for every process that
        shares this health (the record is rewritten); returns the ids reset."""
        if model_id is not None and model_id not in self.engine.models:
            hooked = ", ".join(self.engine.models) or "none"
            raise OblixError(f"No hooked model {model_id} (hooked: {hooked}); `oblix models` lists them.")
        breaker = self.executor.breaker
        breaker.watch(self.models)
        breaker.sync()
        ids = [model_id] if model_id is not None else list(self.engine.models)
        for one in ids:
            breaker.reset(one)
        breaker.flush()
        return ids

    @property
    def agents(self) -> list[BaseAgent]:
        return list(self.engine.agents.values())

    async def hook_model(
        self,
        model_type: ModelType | str,
        model_name: str,
        endpoint: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> bool:
        """Add a model for orchestration; returns ``True`` (as Oblix 0.1.2 did).

        ``options`` go to the backend (e.g. ``n_ctx``, ``n_gpu_layers`` for llama.cpp);
        ``local=True/False`` overrides whether the model counts as local for routing,
        and ``context_window`` its window in tokens. For ``ModelType.CUSTOM`` pass the
        registered backend name as ``backend=``. The model's id (``"<type>:<name>"``)
        is what ``hook_backend(build_backend(...))`` returns.
        """
        await self.hook_backend(self.build_backend(model_type, model_name, endpoint, api_key, **options))
        return True

    def build_backend(
        self,
        model_type: ModelType | str,
        model_name: str,
        endpoint: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> ModelBackend:
        """The backend :meth:`hook_model` hooks, built but neither started nor hooked."""
        type_name = str(model_type.value if isinstance(model_type, ModelType) else model_type)
        if type_name == ModelType.CUSTOM.value:
            type_name = str(options.pop("backend", "") or "")
            if not type_name:
                raise ConfigError("ModelType.CUSTOM needs backend='<registered model type>'.")
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError("model_name must be a non-empty string.")
        check_text(model_name, "model_name", ConfigError)
        return self.registry.make_model(type_name, model_name, endpoint=endpoint, api_key=api_key, **options)

    async def hook_backend(self, backend: ModelBackend) -> str:
        """Hook a backend instance you built yourself (started here unless it already is)."""
        if not isinstance(backend, ModelBackend):
            raise ConfigError(f"hook_backend needs a ModelBackend instance, got {backend!r}.")
        check_part_methods("Model backend", backend.model_id, backend, ModelBackend, ("generate",))
        if backend.model_id in self.engine.models:
            raise ConfigError(f"Model {backend.model_id} is already hooked.")
        if not backend.started:
            await backend.start()
        self.engine.models[backend.model_id] = backend
        self._tell_agents()
        if self.engine.pricing.price(backend.model_id, backend.is_local) is None:  # before any answer
            await anyio.to_thread.run_sync(
                notice_once,
                self.home,
                f"no-price:{backend.model_id}",
                f"no price for cloud model {backend.model_id}: its cost counts as 0 in usage and budgets; "
                "set price_in/price_out on its [[models]] entry (said once per Oblix home).",
            )
        return backend.model_id

    async def unhook_model(self, model_id: str, release: bool = True) -> bool:
        """Remove a hooked model (and release it unless ``release=False``); ``False`` if not hooked."""
        backend = self.engine.models.pop(model_id, None)
        if backend is None:
            return False
        self._tell_agents()
        if release:
            await backend.aclose()
        return True

    async def hook_configured_models(self, cloud_only: bool = False) -> list[str]:
        """Hook the models of ``config.toml``, or the embedded defaults when it lists none.

        With no ``[[models]]`` entry the defaults are the packaged local model
        (``llama_cpp:gemma-3-270m``) and, when ``$OPENAI_API_KEY`` is set,
        ``openai:gpt-4o-mini``. A default that cannot load (its extra is not installed)
        is skipped with a one-line warning; configured models must load. ``cloud_only``
        skips local models (nothing to load). Returns the hooked ids.
        """
        configured = list(self.config.models)
        entries = configured or default_model_entries(self.registry.models)
        if cloud_only:
            backends = self.registry.models
            local = {name for name, cls in backends.items() if cls.default_local}
            entries = [e for e in entries if not e.get("local", e["type"] in local)]
        hooked = []
        for entry in entries:
            try:
                hooked.append(await self.hook_backend(self.build_backend(**model_arguments(entry))))
            except (ConfigError, PluginError) as exc:  # e.g. the cloud default's extra is not installed
                if configured:
                    raise
                log.warning("skipping the default model %s:%s: %s", entry["type"], entry["name"], exc)
        return hooked

    def hook_agent(self, agent: BaseAgent) -> bool:
        """Add a monitoring agent; it starts sampling in the background at once. Returns ``True``."""
        if not isinstance(agent, BaseAgent):
            raise ConfigError(f"hook_agent needs a BaseAgent instance, got {agent!r}.")
        if agent.name in self.engine.agents:
            raise ConfigError(f"An agent named {agent.name!r} is already hooked.")
        self.engine.agents[agent.name] = agent
        agent.set_models(self.models)
        agent.start()
        return True

    def hook_default_agents(self) -> list[str]:
        """Hook the agents of ``config.toml`` ``[agents] enabled`` (default: every registered one).

        Options for an agent come from its own table, e.g. ``[agents.connectivity]``.
        Agents already hooked under the same name are kept. Returns the hooked names.
        """
        for name in (*self.config.agents_enabled, *self.config.agent_options):
            if name not in self.registry.agents:
                known = ", ".join(sorted(self.registry.agents)) or "none"
                raise ConfigError(
                    f"{self.config.path}: [agents] names an unknown agent {name!r} (known: {known})."
                )
        hooked = []
        for name in self.config.agents_enabled or sorted(self.registry.agents):
            if name in self.engine.agents:
                continue
            try:
                agent = self.registry.make_agent(name, **self.config.agent_options.get(name, {}))
            except PluginError as exc:  # a plugin's agent that fails to start
                if self.config.agents_enabled or name in self.config.agent_options:
                    raise  # the user chose it: say so
                log.warning("agent %r not hooked: %s", name, exc)  # every registered one: go on
                continue
            self.hook_agent(agent)
            hooked.append(agent.name)
        return hooked

    def agent_checks(self) -> list[AgentCheck]:
        """Each agent's latest check (cached; never waits on a probe)."""
        return self.engine.agent_checks()

    def _tell_agents(self) -> None:
        for agent in self.engine.agents.values():
            agent.set_models(self.models)

    # -- execution ----------------------------------------------------------------------

    def _request(
        self,
        prompt: str,
        temperature: float | None,
        max_tokens: int | None,
        request_id: str | None,
        session_id: str | None,
        options: dict[str, Any],
    ) -> Request:
        """Build the request once, checking what the caller passed."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise OblixError("The prompt is empty; pass the text to send to the model.")
        check_text(prompt, "The prompt")
        if session_id is not None:
            validate_session_id(session_id)
        if temperature is not None or max_tokens is not None or request_id is not None:
            _check_generation(temperature, max_tokens, request_id)
        routing = {k: options.pop(k) for k in ROUTING_OPTIONS if k in options} if options else {}
        system = routing.get("system")
        if system is not None and not isinstance(system, str):
            raise OblixError(f"system must be a string, got {type(system).__name__}.")
        if system is not None:
            check_text(system, "The system prompt")
        if routing.get("history") is not None and session_id is not None:
            raise OblixError("Pass either session_id (stored history) or history= (your own), not both.")
        workspace = options.pop("workspace_id", None)
        retrieval = (  # documents (none asked and no connectors: nothing to resolve)
            self._retrieval_for(workspace, session_id, routing)
            if workspace is not None or getattr(self, "_connector_workspaces", None)
            else None
        )
        if options:  # the rest go to the model (none: nothing to check)
            check_json(options, "The model options")
            forced, fallback = routing.get("model"), bool(routing.get("fallback", False))
            check_request_options(candidates_for(self.models, forced, fallback), options)
        request = Request(
            messages=(),
            temperature=temperature,
            max_tokens=max_tokens,
            options=options,
            prompt=prompt,
            session_id=session_id or self.current_session_id,
            model=routing.get("model"),
            fallback=bool(routing.get("fallback", False)),
            local_only=bool(routing.get("local_only", False)),
            preference=routing.get("preference"),
            system=routing.get("system"),
            history=_history(routing.get("history"), bool(routing.get("store", True))),
            store=bool(routing.get("store", True)),
            retrieval=retrieval,
        )
        key = routing.get("idempotency_key")
        if key is not None:
            request.idempotency_key = check_key(key)
            request.request_id = request_id_for(request.idempotency_key)
        elif request_id:  # the caller's id, which may repeat: not a key of anything stored
            request.request_id, request.usage_id = request_id, f"{request_id}.{random_hex()[:8]}"
        return request

    def stream(
        self,
        prompt: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
        **options: Any,
    ) -> ResponseStream:
        """Stream an answer as an async iterator of text chunks (see :class:`ResponseStream`).

        Routing options: ``model="<id>"`` forces a model (``fallback=True`` lets others
        answer if it cannot), ``local_only=True`` keeps the request and its session on
        local models, ``preference="cloud-first"`` overrides the default, ``system=``
        adds a system prompt for this request, ``history=[{"role": ..., "content": ...}]``
        gives earlier messages instead of a stored session, ``store=False`` stores
        nothing, ``idempotency_key="<id>"`` makes a retry of this request answered once
        (the first result replayed; see docs/reliability.md). Other options go to the
        model (``stop``, ``top_p``...).
        """
        request = self._request(prompt, temperature, max_tokens, request_id, session_id, options)
        return ResponseStream(self.engine, request)

    async def execute(
        self,
        prompt: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        request_id: str | None = None,
        session_id: str | None = None,
        stream: bool = True,
        chat: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Answer ``prompt`` and store the exchange in a session.

        The session is ``session_id``, else the current session, else a new one. With
        ``stream=True`` the answer is printed to the terminal as it arrives. With
        ``chat=True`` an interactive chat starts with ``prompt`` as its first message
        and the result of its last answer is returned when the user leaves.
        """
        display_metrics = bool(options.pop("display_metrics", False))  # Oblix 0.1.2's flag
        if chat:
            from oblix_core.terminal.chat import run_chat

            return await run_chat(self, prompt, session_id=session_id, stream=stream, **options)
        response = self.stream(prompt, temperature, max_tokens, request_id, session_id, **options)
        if not stream:
            return await response.collect()
        from oblix_core.terminal.console import print_answer

        result = await print_answer(response)
        if display_metrics:
            print_metrics(result)
        return result

    # -- usage --------------------------------------------------------------------------

    @property
    def usage_ledger(self) -> UsageLedger:
        """Where answered requests are recorded (the store's own ledger, else SQLite in home)."""
        assert self.engine.ledger is not None
        return self.engine.ledger

    def usage(
        self, since: str | date = "7d", by: str | None = None, versus: str | None = None
    ) -> dict[str, Any]:
        """Requests, tokens, cost, local share and savings since ``since`` (``7d``, ``2w``, a date).

        ``by``: ``model``, ``day`` or ``session`` rows besides the total. ``versus``: the
        reference cloud model for ``saved_usd`` (default: the first hooked or configured
        cloud model with a known price, else ``openai:gpt-4o-mini``). Blocking: reads the ledger.
        """
        start = since if isinstance(since, date) else parse_since(since)
        known = [(m.model_id, m.is_local) for m in self.models]
        for entry in self.config.models:
            try:
                local = entry.get("local", self.registry.model_class(entry["type"]).default_local)
            except OblixError:
                continue  # its plugin is not installed
            known.append((f"{entry['type']}:{entry['name']}", bool(local)))
        priced = [(m, local) for m, local in known if self.engine.pricing.price(m, local=False) is not None]
        reference = reference_model(priced, versus)
        return usage_report(self.usage_ledger, start, by, reference, self.engine.pricing)

    # -- lifetime -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop agents, release models and close the store."""
        for agent in self.engine.agents.values():
            await anyio.to_thread.run_sync(agent.stop)
        models = list(self.engine.models.values())
        self.engine.models.clear()
        for model in models:
            await model.aclose()
        if self.engine.ledger is not None:
            await anyio.to_thread.run_sync(self.engine.ledger.close)
        await anyio.to_thread.run_sync(self.store.close)

    async def __aenter__(self) -> OblixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        return (
            f"<OblixClient models={list(self.engine.models)} agents={list(self.engine.agents)} "
            f"store={self.store.name}>"
        )
