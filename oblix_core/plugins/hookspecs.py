"""Every hook Oblix calls. Plugins implement them with ``oblix_core.hookimpl``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from oblix_core.agents import AgentCheck, BaseAgent
    from oblix_core.documents.parts import DocumentIndex, DocumentReader, Embedder
    from oblix_core.models.backend import ModelBackend
    from oblix_core.request.context import Request
    from oblix_core.request.routing import RouteRequest, RoutingPlan
    from oblix_core.sessions.store import SessionStore

hookspec = pluggy.HookspecMarker("oblix")
hookimpl = pluggy.HookimplMarker("oblix")


@hookspec
def oblix_register_models(register: Callable[[str, type[ModelBackend]], None]) -> None:
    """Register model backends.

    Fires once when a client (or the CLI) loads its plugins. Call
    ``register(model_type, backend_class)`` once per backend, where ``model_type`` is a
    :class:`~oblix_core.models.backend.ModelType` value or a name of your own and
    ``backend_class`` subclasses :class:`~oblix_core.models.backend.ModelBackend`. Returns nothing.
    """


@hookspec
def oblix_register_agents(register: Callable[[str, type[BaseAgent]], None]) -> None:
    """Register monitoring agent classes.

    Fires once when plugins are loaded. Call ``register(name, agent_class)`` once per
    agent class (a subclass of :class:`~oblix_core.agents.BaseAgent`); ``oblix agents``
    and the config file refer to agents by that name. Returns nothing.
    """


@hookspec
def oblix_register_session_stores(register: Callable[[str, Callable[..., SessionStore]], None]) -> None:
    """Register session store backends.

    Fires once when plugins are loaded. Call ``register(name, factory)`` where
    ``factory(**options)`` returns a :class:`~oblix_core.sessions.store.SessionStore`
    (``OblixClient(session_store=name, store_options={...})`` selects it). Returns nothing.
    """


@hookspec
def oblix_register_commands(cli: click.Group) -> None:
    """Add commands to the ``oblix`` command line.

    Fires once when the CLI starts. Receives the root :class:`click.Group`; add
    commands with ``@cli.command()`` or ``cli.add_command(...)``. Returns nothing.
    """


@hookspec(firstresult=True)
def oblix_route(
    request: RouteRequest,
    models: Sequence[ModelBackend],
    checks: Sequence[AgentCheck],
) -> RoutingPlan | None:
    """Choose which models serve a request, in order.

    Fires on every request, after the session history is loaded. Receives the
    :class:`~oblix_core.request.routing.RouteRequest` (preference, ``local_only``, explicit
    model), the hooked models and the agents' latest checks. Returns a
    :class:`~oblix_core.request.routing.RoutingPlan` (ordered candidates plus a human-readable
    decision), or ``None`` to let the next implementation decide. Stops at the first
    non-None result; the core's default policy runs last.
    """


@hookspec
def oblix_request_start(request: Request) -> None:
    """Inspect or rewrite a request before any model sees it.

    Fires once per ``execute``/``stream`` call, after the session's recent history is
    read and before routing; each model then gets ``request.messages`` trimmed to its
    own context window. ``request.messages`` (a list of ``ChatMessage``: system
    prompt and context, history, the new prompt) may be replaced or edited in place,
    e.g. to redact secrets; what is stored in the session is the user's original prompt. Raising
    rejects the request. Returns nothing.
    """


@hookspec
def oblix_request_end(request: Request, result: dict[str, Any]) -> None:
    """Observe a finished request (logging, telemetry).

    Fires after the answer is complete and persisted. Receives the request and the
    result dict returned to the caller (``response``, ``model_id``, ``metrics``...).
    Returns nothing; an exception is logged with the plugin's name and ignored, and
    the other implementations still run.
    """


@hookspec
def oblix_request_replayed(request: Request, result: dict[str, Any]) -> None:
    """Observe a request answered by replaying an earlier try's result (same idempotency key).

    Fires instead of ``oblix_request_end`` when no model ran and nothing was stored or
    counted; ``result`` is the first try's result with ``metrics["replayed"] = True``.
    Returns nothing; an exception is logged with the plugin's name and ignored, and the
    other implementations still run.
    """


@hookspec
def oblix_request_error(request: Request, error: BaseException) -> None:
    """Observe a failed request.

    Fires when a request ends with an error (after retries and fallbacks). Receives the
    request and the exception about to be raised to the caller. Returns nothing; an
    exception is logged with the plugin's name and ignored, and the other
    implementations still run.
    """


@hookspec
def oblix_register_embedders(register: Callable[[str, Callable[..., Embedder]], None]) -> None:
    """Register embedders (texts to vectors, for document search).

    Fires once when plugins are loaded. Call ``register(name, factory)`` where
    ``factory(model=None, **options)`` returns an :class:`~oblix_core.documents.parts.Embedder`;
    a workspace names its embedder as ``name`` or ``name:model`` (``"local"``,
    ``"openai:text-embedding-3-small"``). Returns nothing.
    """


@hookspec
def oblix_register_document_indexes(register: Callable[[str, Callable[..., DocumentIndex]], None]) -> None:
    """Register document indexes (where chunks and vectors are kept and searched).

    Fires once when plugins are loaded. Call ``register(name, factory)`` where
    ``factory(**options)`` returns a :class:`~oblix_core.documents.parts.DocumentIndex`
    (``[documents] index = "<name>"`` in ``config.toml`` selects it; ``oblix_home()``
    gives the home to keep files in). Returns nothing.
    """


@hookspec
def oblix_register_document_readers(register: Callable[[str, Callable[[], DocumentReader]], None]) -> None:
    """Register document readers (a file type to text blocks with positions).

    Fires once when plugins are loaded. Call ``register(name, factory)`` where ``factory()``
    returns a :class:`~oblix_core.documents.parts.DocumentReader`; its ``suffixes`` say which
    files it reads (a later plugin's reader wins for a suffix both read). Returns nothing.
    """
