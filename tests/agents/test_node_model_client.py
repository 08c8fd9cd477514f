"""The validator's facts of its model: from the settings when the model node is vLLM, whose
/health is an empty 200, else from `nullius mlnode`'s /health.

The model nodes here are httpx.MockTransport stand-ins that answer /health the way each server
does (vLLM cannot run on this machine); `test_mlnode_api` checks our own /health for real.
"""

from __future__ import annotations

import httpx
import pytest

from agents.node.model_client import ModelNodeError, ModelSpec, model_spec

BASE = "http://model-node"


def _http(health: httpx.Response, calls: list) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return health

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_model_spec__both_configured__no_request():
    calls: list = []
    async with _http(httpx.Response(200), calls) as http:
        assert await model_spec(http, BASE, eos_token_id=2, vocab_size=32_000) == ModelSpec(2, 32_000)
    assert calls == []


async def test_model_spec__nullius_mlnode_health__read_from_it():
    calls: list = []
    health = httpx.Response(200, json={"status": "ok", "model": "m", "eos_token_id": 0, "vocab_size": 4096})
    async with _http(health, calls) as http:
        assert await model_spec(http, BASE) == ModelSpec(0, 4096)
        # one setting alone is not enough to skip the model node
        assert await model_spec(http, BASE, eos_token_id=0) == ModelSpec(0, 4096)
    assert calls == ["/health", "/health"]


@pytest.mark.parametrize("health", [httpx.Response(200), httpx.Response(200, json={"status": "ok"})])
async def test_model_spec__vllm_health_without_settings__names_the_settings(health):
    async with _http(health, []) as http:
        with pytest.raises(ModelNodeError) as err:
            await model_spec(http, BASE)
    assert str(err.value) == ("model node /health lacks eos_token_id and vocab_size (vLLM serves neither): "
                              "set model_eos_token_id and model_vocab_size in the node's settings")


async def test_model_spec__health_fails__error_names_status():
    async with _http(httpx.Response(503, text="loading"), []) as http:
        with pytest.raises(ModelNodeError) as err:
            await model_spec(http, BASE)
    assert str(err.value) == "model node health failed (503): loading"
