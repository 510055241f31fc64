"""In-process models load on first use: a request routed elsewhere never pays for their weights."""

from __future__ import annotations

from typing import Any

import pytest

from oblix import ModelType, OblixClient
from tests.openai_loopback import LoopbackOpenAI

pytestmark = pytest.mark.llama


@pytest.mark.anyio
async def test_the_local_model_loads_only_when_a_request_uses_it(make_client: Any) -> None:
    with LoopbackOpenAI(answer="from the cloud") as cloud:
        client: OblixClient = make_client()
        await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m", seed=1)
        await client.hook_model(ModelType.OPENAI, "cloud", endpoint=f"http://127.0.0.1:{cloud.port}/v1")
        local = client.find_model("llama_cpp:gemma-3-270m")
        assert local is not None and local.started
        assert local._llama is None  # hooked, checked, not loaded
        forced = await client.execute("Hi", model="openai:cloud", stream=False, store=False)
        assert forced["response"] == "from the cloud"
        assert local._llama is None  # the cloud answered: the weights were never read
        answer = await client.execute(
            "What is the capital of France?", model="llama_cpp:gemma-3-270m", stream=False, store=False
        )
        assert answer["model_id"] == "llama_cpp:gemma-3-270m" and answer["response"].strip()
        assert local._llama is not None and not local.warming
        assert client.model_health()["llama_cpp:gemma-3-270m"]["status"] == "ready"


@pytest.mark.anyio
async def test_warm_up_loads_every_hooked_model_now(make_client: Any) -> None:
    client: OblixClient = make_client()
    await client.hook_model(ModelType.LLAMA_CPP, "gemma-3-270m")
    local = client.find_model("llama_cpp:gemma-3-270m")
    assert local is not None and local._llama is None
    await client.warm_up()
    assert local._llama is not None
