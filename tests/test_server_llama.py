"""``oblix server`` on the embedded defaults: the packaged Gemma 3 270M through llama.cpp.

One server process for the module (no config file, agents on), driven by the official
``openai`` client with ``model="auto"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.server_process import OblixServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.llama
MODEL = "llama_cpp:gemma-3-270m"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OblixServer]:
    home: Path = tmp_path_factory.mktemp("home")
    with OblixServer(home, agents=True) as srv:
        yield srv


@pytest.fixture
def client(server: OblixServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_whole_answer_with_auto(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=QUESTION, max_tokens=24, temperature=0, seed=1
    )
    answer = raw.parse()
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.model == MODEL and raw.headers["X-Oblix-Model"] == MODEL
    assert raw.headers["X-Oblix-Route"]
    assert answer.usage is not None and answer.usage.model_extra == {"oblix_estimated": False}
    assert 0 < answer.usage.completion_tokens <= 24


def test_streamed_answer_with_auto_and_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and {c.model for c in chunks} == {MODEL}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.model_extra == {"oblix_estimated": False}
    assert usage.completion_tokens > 0


def test_disconnect_stops_the_local_model(client: openai.OpenAI, server: OblixServer) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
        max_tokens=2000,
        temperature=0,
        stream=True,
    )
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    assert server.health()["models"][0]["busy"]
    stream.close()
    assert wait_until(lambda: not server.health()["models"][0]["busy"], 1.0)
