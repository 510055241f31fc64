"""The contract every :class:`~oblix_core.models.backend.ModelBackend` must satisfy."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest

from oblix_core.models.backend import ChatMessage, GenerationRequest, ModelBackend, StreamChunk


def _request(text: str = "What is the capital of France?", max_tokens: int = 16) -> GenerationRequest:
    return GenerationRequest((ChatMessage("user", text),), temperature=0.0, max_tokens=max_tokens)


class ModelBackendContract:
    """Subclass and provide a ``backend`` fixture returning a started backend.

    Every test is async (``@pytest.mark.anyio``), so the fixture may be an async one
    that starts the backend in the test's own event loop.

    Set ``secret`` (class attribute) to the API key the fixture used, if any, so the
    suite can check that it never shows up in ``repr`` or ``describe``.
    """

    secret: str | None = None

    @pytest.fixture
    def backend(self) -> ModelBackend:  # pragma: no cover - always overridden
        raise NotImplementedError("provide a `backend` fixture")

    @pytest.mark.anyio
    async def test_identity(self, backend: ModelBackend) -> None:
        assert backend.model_id == f"{backend.model_type}:{backend.model_name}"
        assert backend.context_window > 0
        description = backend.describe()
        assert description["model_id"] == backend.model_id
        if self.secret:
            assert self.secret not in repr(backend) and self.secret not in str(description)

    @pytest.mark.anyio
    async def test_count_tokens(self, backend: ModelBackend) -> None:
        short, long = backend.count_tokens("hello"), backend.count_tokens("hello world " * 50)
        assert 0 < short < long
        assert backend.count_tokens("") == 0

    @pytest.mark.anyio
    async def test_stream_produces_text(self, backend: ModelBackend) -> None:
        chunks = [c async for c in backend.stream(_request())]
        assert all(isinstance(c, StreamChunk) for c in chunks)
        assert "".join(c.text for c in chunks).strip()
        usages = [c.usage for c in chunks if c.usage]
        if usages and usages[-1].output_tokens is not None:
            assert 0 < usages[-1].output_tokens <= 16

    @pytest.mark.anyio
    async def test_early_close_stops_promptly(self, backend: ModelBackend) -> None:
        with anyio.fail_after(30):
            async with aclosing(
                backend.stream(_request("Write a long story about a dragon.", 200))
            ) as stream:
                async for chunk in stream:
                    if chunk.text:
                        break
        # the backend must still serve a full request afterwards
        with anyio.fail_after(60):
            assert "".join([c.text async for c in backend.stream(_request())]).strip()

    @pytest.mark.anyio
    async def test_concurrent_requests(self, backend: ModelBackend) -> None:
        results: list[str] = []

        async def one(i: int) -> None:
            country = ("France", "Italy", "Spain")[i]
            text = "".join(
                [c.text async for c in backend.stream(_request(f"What is the capital of {country}?"))]
            )
            results.append(text)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(3):
                    tg.start_soon(one, i)
        assert len(results) == 3 and all(r.strip() for r in results)
