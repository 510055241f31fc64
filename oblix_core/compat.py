"""Oblix 0.1.2's client methods, kept as thin compatibility names on :class:`OblixClient`.

Code written against Oblix 0.1.2 runs unchanged: ``list_models``, ``get_model``,
``chat_once``, ``execute_streaming``, ``start_chat``/``chat_streaming``,
``get_resource_metrics``, ``get_connectivity_metrics`` and ``cleanup``. Each is a few
lines over the current API (named in its docstring); new code should call that instead.
See ``docs/migrating-from-0.1.2.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio

from oblix_core.agents import AgentState
from oblix_core.errors import ConfigError

if TYPE_CHECKING:
    from oblix_core.agents import BaseAgent
    from oblix_core.client import OblixClient

#: Seconds ``get_*_metrics`` wait for an agent's first sample when it has none yet.
FIRST_SAMPLE_WAIT = 5.0


class Compat012:
    """Oblix 0.1.2's names (mixed into :class:`~oblix_core.client.OblixClient`)."""

    def _client(self) -> OblixClient:
        return cast("OblixClient", self)

    def list_models(self) -> dict[str, list[str]]:
        """The hooked models' names by type, e.g. ``{"claude": ["claude-3-5-sonnet-20241022"]}``.

        0.1.2's name; :attr:`OblixClient.models` gives the backends themselves.
        """
        found: dict[str, list[str]] = {}
        for model in self._client().models:
            found.setdefault(model.model_type, []).append(model.model_name)
        return found

    def get_model(self, model_type: Any, model_name: str) -> dict[str, Any] | None:
        """``{"type", "name", "endpoint"}`` of a hooked model (never its key), else ``None``.

        0.1.2's name; :meth:`OblixClient.find_model` returns the backend.
        """
        type_name = str(getattr(model_type, "value", model_type))
        model = self._client().find_model(f"{type_name}:{model_name}")
        if model is None:
            return None
        return {
            "type": model.model_type,
            "name": model.model_name,
            "endpoint": model.describe().get("endpoint"),
        }

    async def chat_once(self, prompt: str, session_id: str | None = None) -> dict[str, Any]:
        """Answer ``prompt`` in ``session_id`` (else a new session, made current); no printing.

        The result is :meth:`OblixClient.execute`'s, with ``session_id``. 0.1.2's name.
        """
        client = self._client()
        if not session_id:
            session_id = await client.create_session()
        client.use_session(session_id)
        return await client.execute(prompt, session_id=session_id, stream=False)

    async def execute_streaming(
        self,
        prompt: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
        request_id: str | None = None,
        display_metrics: bool = True,
        **options: Any,
    ) -> dict[str, Any]:
        """Print the answer as it streams and return the result: ``execute(..., stream=True)``."""
        return await self._client().execute(
            prompt,
            temperature,
            max_tokens,
            request_id,
            stream=True,
            display_metrics=display_metrics,
            **options,
        )

    async def start_chat(
        self, session_id: str | None = None, *, read_line: Callable[[str], str] = input
    ) -> str | None:
        """The interactive chat (``/exit``, Ctrl-D or Ctrl-C to leave); returns its session id.

        Continues ``session_id``, else the current session, else starts a new one.
        ``read_line`` replaces ``input`` (for tests and other front ends). 0.1.2's name
        for ``execute(prompt, chat=True)`` without a first prompt.
        """
        from oblix_core.terminal.chat import run_chat

        result = await run_chat(self._client(), None, session_id=session_id, read_line=read_line)
        session = result.get("session_id")
        return str(session) if session else None

    async def chat_streaming(
        self, session_id: str | None = None, *, read_line: Callable[[str], str] = input
    ) -> str | None:
        """The interactive chat with streamed answers (as :meth:`start_chat`); 0.1.2's name."""
        return await self.start_chat(session_id, read_line=read_line)

    async def get_resource_metrics(self) -> dict[str, Any] | None:
        """The resource monitor's latest metrics (``cpu_percent``, ``memory_percent``...), JSON-safe.

        Also ``state``, ``target``, ``reason`` and ``checked_at`` of that check; ``None``
        when no resource monitor is hooked. 0.1.2's name; see :meth:`OblixClient.agent_checks`.
        """
        return await self._metrics("resource_monitor")

    async def get_connectivity_metrics(self) -> dict[str, Any] | None:
        """The connectivity agent's latest metrics (latency, packet loss...), JSON-safe.

        As :meth:`get_resource_metrics`; ``None`` when no connectivity agent is hooked.
        """
        return await self._metrics("connectivity")

    async def _metrics(self, kind: str) -> dict[str, Any] | None:
        agent = _find_agent(self._client().agents, kind)
        if agent is None:
            return None
        check = agent.latest()
        if check.state == AgentState.PENDING:  # hooked a moment ago: its first sample is on the way
            check = await anyio.to_thread.run_sync(agent.wait_first, FIRST_SAMPLE_WAIT)
        data = check.to_dict()
        merged = dict(data["metrics"]) | {k: data[k] for k in ("state", "target", "reason", "checked_at")}
        return cast("dict[str, Any]", json.loads(json.dumps(merged, default=str)))

    async def hook_model_specs(
        self, local: Sequence[str] = (), cloud: Sequence[str] = (), cloud_api_key: str | None = None
    ) -> list[str]:
        """Hook ``TYPE:NAME`` models (0.1.2's ``--local-model``/``--cloud-model``); returns their ids.

        ``cloud_api_key`` goes to the cloud models (kept in memory only); without it each
        backend reads its provider's environment variable (``$OPENAI_API_KEY``,
        ``$ANTHROPIC_API_KEY``). One key cannot serve cloud models of two providers.
        """
        client = self._client()
        parsed = [(parse_model_spec(s, "--local-model"), False) for s in local]
        parsed += [(parse_model_spec(s, "--cloud-model"), True) for s in cloud]
        providers = {kind for (kind, _), is_cloud in parsed if is_cloud}
        if cloud_api_key and len(providers) != 1:
            raise ConfigError(
                "--cloud-api-key needs exactly one cloud provider among the --cloud-model flags (got "
                f"{', '.join(sorted(providers)) or 'none'}); set each provider's key variable instead."
            )
        hooked = []
        for (kind, name), is_cloud in parsed:
            key = cloud_api_key if is_cloud else None
            hooked.append(await client.hook_backend(client.build_backend(kind, name, api_key=key)))
        return hooked

    async def cleanup(self) -> None:
        """Stop the agents, release the models and close the store: :meth:`OblixClient.shutdown`.

        Touches nothing of the host application's (no event loop, signal or logging changes).
        """
        await self._client().shutdown()


def _find_agent(agents: list[BaseAgent], kind: str) -> BaseAgent | None:
    """The hooked agent of that kind: by name, else by its class's default name."""
    for agent in agents:
        if agent.name == kind:
            return agent
    return next((a for a in agents if type(a).default_name == kind), None)


def print_metrics(result: dict[str, Any]) -> None:
    """One line of the answer's metrics on stderr (0.1.2's ``display_metrics=True``)."""
    import sys

    metrics = result.get("metrics") or {}
    sys.stderr.write(
        f"[{result.get('model_id')} · {metrics.get('output_tokens')} tokens · "
        f"{metrics.get('tokens_per_second') or '-'} tok/s · "
        f"{metrics.get('latency_ms')} ms · session {result.get('session_id')}]\n"
    )
    sys.stderr.flush()


def parse_model_spec(spec: str, flag: str = "--model") -> tuple[str, str]:
    """``"TYPE:NAME"`` (0.1.2's ``--local-model``/``--cloud-model``) as ``(type, name)``.

    Only the first colon separates: ``ollama:llama2:latest`` is Ollama's ``llama2:latest``.
    """
    kind, sep, name = (spec or "").strip().partition(":")
    if not sep or not kind or not name:
        raise ConfigError(
            f"{flag} wants TYPE:NAME, e.g. ollama:llama2 or claude:claude-3-5-haiku-latest; got {spec!r}."
        )
    return kind, name
