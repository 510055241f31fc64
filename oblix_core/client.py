"""``OblixClient``: hook models and agents, manage sessions, execute prompts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio

from oblix_core import session_io
from oblix_core.agents import AgentCheck, BaseAgent
from oblix_core.config import Config, default_model_entries, load_config, model_arguments, oblix_home
from oblix_core.conversation import ResponseStream
from oblix_core.errors import (
    ConfigError,
    InvalidSessionDocumentError,
    OblixError,
    SessionError,
    SessionExistsError,
    SessionNotFoundError,
)
from oblix_core.execution import CircuitBreaker, ExecutionSettings, Executor
from oblix_core.models import ModelBackend, ModelType
from oblix_core.plugins import Registry, build_plugin_manager
from oblix_core.records import SessionRecord, new_session_id, utc_now, validate_session_id
from oblix_core.stores import SessionStore


def _json_dict(value: Any, name: str) -> dict[str, Any]:
    """``value`` (None -> {}) if it is a dict that JSON can store, else a clear error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SessionError(f"{name} must be a dict, got {type(value).__name__}.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SessionError(f"{name} must be JSON-serialisable (str keys, no NaN): {exc}.") from None
    return dict(value)


class OblixClient:
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
        self.plugin_manager = self.registry.pm
        self.preference = preference or self.config.preference
        if isinstance(session_store, SessionStore):
            self.store = session_store
        else:
            name = session_store or self.config.store
            options = dict(store_options if store_options is not None else self.config.store_options)
            if name == "file":
                options.setdefault("root", self.home / "sessions")
            self.store = self.registry.make_store(name, **options)
        settings = execution or self.config.execution
        self.executor = Executor(settings, CircuitBreaker(settings.failure_threshold, settings.cooldown))
        self._models: dict[str, ModelBackend] = {}
        self._agents: dict[str, BaseAgent] = {}
        self._current_session_id: str | None = None

    # -- models and agents -------------------------------------------------------------

    @property
    def models(self) -> list[ModelBackend]:
        """Hooked models, in the order they were hooked."""
        return list(self._models.values())

    @property
    def agents(self) -> list[BaseAgent]:
        return list(self._agents.values())

    async def hook_model(
        self,
        model_type: ModelType | str,
        model_name: str,
        endpoint: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> str:
        """Add a model for orchestration and return its id (``"<type>:<name>"``).

        ``options`` go to the backend (e.g. ``n_ctx``, ``n_gpu_layers`` for llama.cpp);
        ``local=True/False`` overrides whether the model counts as local for routing,
        and ``context_window`` its window in tokens. For ``ModelType.CUSTOM`` pass the
        registered backend name as ``backend=``.
        """
        type_name = str(model_type.value if isinstance(model_type, ModelType) else model_type)
        if type_name == ModelType.CUSTOM.value:
            type_name = str(options.pop("backend", "") or "")
            if not type_name:
                raise ConfigError("ModelType.CUSTOM needs backend='<registered model type>'.")
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError("model_name must be a non-empty string.")
        backend = self.registry.model_class(type_name)(
            model_name, endpoint=endpoint, api_key=api_key, **options
        )
        if backend.model_id in self._models:
            raise ConfigError(f"Model {backend.model_id} is already hooked.")
        await backend.start()
        self._models[backend.model_id] = backend
        self._tell_agents()
        return backend.model_id

    async def unhook_model(self, model_id: str) -> bool:
        """Remove a hooked model and release it; ``False`` if it was not hooked."""
        backend = self._models.pop(model_id, None)
        if backend is None:
            return False
        self._tell_agents()
        await backend.aclose()
        return True

    async def hook_configured_models(self, cloud_only: bool = False) -> list[str]:
        """Hook the models of ``config.toml``, or the embedded defaults when it lists none.

        With no ``[[models]]`` entry the defaults are the packaged local model
        (``llama_cpp:gemma-3-270m``) and, when ``$OPENAI_API_KEY`` is set,
        ``openai:gpt-4o-mini``. ``cloud_only`` skips local models (nothing to load).
        Returns the hooked ids.
        """
        entries = list(self.config.models) or default_model_entries(self.registry.models)
        if cloud_only:
            entries = [
                e for e in entries if not e.get("local", self.registry.model_class(e["type"]).default_local)
            ]
        return [await self.hook_model(**model_arguments(entry)) for entry in entries]

    def hook_agent(self, agent: BaseAgent) -> None:
        """Add a monitoring agent; it starts sampling in the background at once."""
        if not isinstance(agent, BaseAgent):
            raise ConfigError(f"hook_agent needs a BaseAgent instance, got {agent!r}.")
        if agent.name in self._agents:
            raise ConfigError(f"An agent named {agent.name!r} is already hooked.")
        self._agents[agent.name] = agent
        agent.set_models(self.models)
        agent.start()

    def hook_default_agents(self) -> list[str]:
        """Hook the agents of ``config.toml`` ``[agents] enabled`` (default: every registered one).

        Options for an agent come from its own table, e.g. ``[agents.connectivity]``.
        Agents already hooked under the same name are kept. Returns the hooked names.
        """
        hooked = []
        for name in self.config.agents_enabled or sorted(self.registry.agents):
            if name in self._agents:
                continue
            cls = self.registry.agent_class(name)
            try:
                agent = cls(**self.config.agent_options.get(name, {}))
            except TypeError as exc:
                raise ConfigError(f"Invalid options for agent {name!r}: {exc}.") from exc
            self.hook_agent(agent)
            hooked.append(agent.name)
        return hooked

    def agent_checks(self) -> list[AgentCheck]:
        """Each agent's latest check (cached; never waits on a probe)."""
        return [agent.latest() for agent in self._agents.values()]

    def _tell_agents(self) -> None:
        for agent in self._agents.values():
            agent.set_models(self.models)

    # -- execution ----------------------------------------------------------------------

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

        Routing options: ``model="<id>"`` forces a model, ``local_only=True`` keeps the
        request on local models, ``preference="cloud-first"`` overrides the default.
        Other options go to the model (``stop``, ``top_p``...).
        """
        if session_id is not None:
            validate_session_id(session_id)
        return ResponseStream(
            self,
            prompt,
            session_id=session_id,
            temperature=temperature,
            max_tokens=max_tokens,
            request_id=request_id,
            options=options,
        )

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
        if chat:
            from oblix_core.chat import run_chat

            return await run_chat(self, prompt, session_id=session_id, stream=stream, **options)
        response = self.stream(prompt, temperature, max_tokens, request_id, session_id, **options)
        async with response:
            async for text in response:
                if stream:
                    sys.stdout.write(text)
                    sys.stdout.flush()
        if stream:
            sys.stdout.write("\n")
            sys.stdout.flush()
        assert response.result is not None
        return response.result

    # -- sessions -----------------------------------------------------------------------

    @property
    def current_session_id(self) -> str | None:
        """The session ``execute`` uses when given none (set by :meth:`use_session`)."""
        return self._current_session_id

    async def create_session(
        self, title: str | None = None, initial_context: dict | None = None, metadata: dict | None = None
    ) -> str:
        """Create an empty session and return its id."""
        if title is not None and not isinstance(title, str):
            raise SessionError(f"title must be a string, got {type(title).__name__}.")
        now = utc_now()
        record = SessionRecord(
            id=new_session_id(),
            title=title,
            created_at=now,
            updated_at=now,
            context=_json_dict(initial_context, "initial_context"),
            metadata=_json_dict(metadata, "metadata"),
        )
        await anyio.to_thread.run_sync(self.store.create, record)
        return record.id

    async def create_and_use_session(
        self, title: str | None = None, initial_context: dict | None = None, metadata: dict | None = None
    ) -> str:
        """Create a session and make it the current one."""
        session_id = await self.create_session(title, initial_context, metadata)
        self._current_session_id = session_id
        return session_id

    def use_session(self, session_id: str) -> bool:
        """Make ``session_id`` the current session; ``False`` if it does not exist."""
        if not self.store.exists(validate_session_id(session_id)):
            return False
        self._current_session_id = session_id
        return True

    def load_session(self, session_id: str) -> dict:
        """The whole session as the API reference's dict."""
        return self.store.load(validate_session_id(session_id)).to_dict()

    def list_sessions(self, limit: int = 50, filter_metadata: dict | None = None) -> list[dict]:
        """Session summaries, most recently updated first."""
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise SessionError(f"limit must be a non-negative integer, got {limit!r}.")
        return self.store.list(limit, _json_dict(filter_metadata, "filter_metadata") or None)

    def delete_session(self, session_id: str) -> bool:
        """Delete a session; ``False`` if it did not exist."""
        deleted = self.store.delete(validate_session_id(session_id))
        if deleted and self._current_session_id == session_id:
            self._current_session_id = None
        return deleted

    def update_session_metadata(self, session_id: str, metadata: dict) -> bool:
        """Merge ``metadata`` into the session's metadata; ``False`` if it does not exist."""
        changes = _json_dict(metadata, "metadata")
        try:
            self.store.update_metadata(validate_session_id(session_id), changes)
        except SessionNotFoundError:
            return False
        return True

    def get_session_metadata(self, session_id: str) -> dict:
        """The session's metadata, without loading its messages."""
        return self.store.get_metadata(validate_session_id(session_id))

    async def export_session(self, session_id: str, file_path: str) -> bool:
        """Write the session to ``file_path`` as JSON (the reference shape + ``format_version``)."""
        record = await anyio.to_thread.run_sync(self.store.load, validate_session_id(session_id))
        text = json.dumps(session_io.export_document(record), indent=2, ensure_ascii=False)
        await anyio.to_thread.run_sync(_write_atomically, Path(file_path), text)
        return True

    async def import_session(
        self, file_path: str, new_id: bool = False, use_immediately: bool = False
    ) -> str:
        """Import a session file; returns its id (a fresh one with ``new_id=True``)."""
        try:
            text = await anyio.Path(file_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OblixError(f"Cannot read session file {file_path}: {exc}.") from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidSessionDocumentError(f"{file_path} is not valid JSON: {exc}.") from exc
        record = session_io.parse_document(document)
        if new_id:
            record = session_io.with_new_id(record)
        try:
            await anyio.to_thread.run_sync(self.store.create, record)
        except SessionExistsError:
            raise SessionExistsError(
                f"A session with id {record.id} already exists; import with new_id=True to keep both."
            ) from None
        if use_immediately:
            self._current_session_id = record.id
        return record.id

    async def copy_session(
        self, session_id: str, new_title: str | None = None, use_immediately: bool = False
    ) -> str:
        """Copy a session (messages, context, metadata) under a new id."""
        source = await anyio.to_thread.run_sync(self.store.load, validate_session_id(session_id))
        copy = session_io.with_new_id(
            source, new_title if new_title is not None else f"Copy of {source.title or source.id}"
        )
        await anyio.to_thread.run_sync(self.store.create, copy)
        if use_immediately:
            self._current_session_id = copy.id
        return copy.id

    async def merge_sessions(
        self, session_ids: list[str], title: str | None = None, use_immediately: bool = False
    ) -> str:
        """Merge sessions into a new one, messages ordered by timestamp."""
        if not isinstance(session_ids, (list, tuple)) or not session_ids:
            raise SessionError("merge_sessions needs a non-empty list of session ids.")
        sources = [
            await anyio.to_thread.run_sync(self.store.load, validate_session_id(sid)) for sid in session_ids
        ]
        merged = session_io.merge(sources, title)
        await anyio.to_thread.run_sync(self.store.create, merged)
        if use_immediately:
            self._current_session_id = merged.id
        return merged.id

    # -- lifetime -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop agents, release models and close the store."""
        for agent in self._agents.values():
            await anyio.to_thread.run_sync(agent.stop)
        for model in list(self._models.values()):
            await model.aclose()
        self._models.clear()
        await anyio.to_thread.run_sync(self.store.close)

    async def __aenter__(self) -> OblixClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def __repr__(self) -> str:
        return (
            f"<OblixClient models={list(self._models)} agents={list(self._agents)} store={self.store.name}>"
        )


#: The name used in Oblix's own examples.
Oblix = OblixClient


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OblixError(f"Cannot write {path}: {exc}.") from exc
