"""A scripted model backend: a test double for the engine, not a model.

Each ``ScriptedBackend`` answers according to a list of :class:`Step` objects shared
by every backend of the same :class:`ScriptedPlugin`, keyed by model name. When a
model's script runs out it echoes the last user message. Register it through the
real hooks with ``OblixClient(plugins=[ScriptedPlugin(...)])`` and hook models as
``hook_model("scripted", "name", local=True)``.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import attrs

from oblix_core.errors import PermanentModelError, TransientModelError
from oblix_core.models.backend import GenerationRequest, ModelBackend, StreamChunk, Usage
from oblix_core.plugins.hookspecs import hookimpl


@attrs.frozen
class Step:
    """One scripted attempt: emit ``chunks`` (each after ``delay`` s), then maybe fail."""

    chunks: tuple[str, ...] = ()
    fail: str | None = None  # "transient", "permanent" or None
    delay: float = 0.0
    finish: str | None = "stop"  # None: the stream ends without a positive end (truncated)


class ScriptedPlugin:
    """A plugin object registering the ``scripted`` model type with shared scripts.

    ``calls[model_name]`` holds the last :data:`KEEP_CALLS` requests each model received.
    """

    KEEP_CALLS = 256

    def __init__(self, scripts: dict[str, list[Step]] | None = None, model_type: str = "scripted") -> None:
        self.scripts: dict[str, list[Step]] = defaultdict(list, scripts or {})
        self.calls: dict[str, deque[GenerationRequest]] = defaultdict(lambda: deque(maxlen=self.KEEP_CALLS))
        self.model_type = model_type

    @hookimpl
    def oblix_register_models(self, register: Callable[[str, type[ModelBackend]], None]) -> None:
        plugin = self

        class Bound(ScriptedBackend):
            model_type = plugin.model_type
            owner = plugin

        register(self.model_type, Bound)


class ScriptedBackend(ModelBackend):
    """Answers from its plugin's script; see the module docstring.

    Like a network backend, an answer is complete only with a finish reason, so a step
    with ``finish=None`` plays a truncated stream.
    """

    model_type = "scripted"
    end_is_complete = False
    owner: ScriptedPlugin

    def __init__(self, model_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("local", True)
        super().__init__(model_name, **kwargs)
        self.cancelled = anyio.Event()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamChunk, None]:
        self.owner.calls[self.model_name].append(request)
        script = self.owner.scripts[self.model_name]
        step = script.pop(0) if script else Step((f"echo: {request.messages[-1].content}",))
        try:
            for chunk in step.chunks:
                if step.delay:
                    await anyio.sleep(step.delay)
                yield StreamChunk(chunk)
        except BaseException:
            self.cancelled.set()
            raise
        if step.fail == "transient":
            raise TransientModelError(f"{self.model_id}: scripted transient failure", model_id=self.model_id)
        if step.fail == "permanent":
            raise PermanentModelError(f"{self.model_id}: scripted permanent failure", model_id=self.model_id)
        text = "".join(step.chunks)
        usage = Usage(self.count_message_tokens(request.messages), self.count_tokens(text))
        yield StreamChunk(usage=usage, finish_reason=step.finish)
