"""What a node reads from a model node's answers: the executor's tokens and top-k logprobs (pure
parsing), and the validator's facts of its model, from the settings when the model node is vLLM,
whose /health is an empty 200, else from `nullius mlnode`'s /health.

The model nodes here are httpx.MockTransport stand-ins that answer /health the way each server
does (vLLM cannot run on this machine); `test_mlnode_api` checks our own /health for real.
"""

from __future__ import annotations

import httpx
import pytest

from agents.node.model_client import TOP_K, Generation, ModelNodeError, ModelSpec, model_spec

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


# -- the executor's parse of logprobs ---------------------------------------------------------

# one position as vLLM answers it: the top 5, and the sampled token (id 9) outside them
TOPS = {"token_id:7": -0.5, "token_id:3": -1.25, "token_id:5": -1.25, "token_id:1": -2.0,
        "token_id:8": -3.0, "token_id:9": -6.0}


def test_generation__completion__top_k_best_first_ties_by_id():
    gen = Generation()
    gen.add_choice("completion", {"text": "ab", "finish_reason": None, "logprobs": {
        "tokens": ["token_id:9", "token_id:7"], "top_logprobs": [TOPS, {"token_id:7": -0.1}]}})
    gen.add_choice("completion", {"text": "c", "finish_reason": "length", "logprobs": None})
    assert TOP_K == 5
    assert (gen.text, gen.token_ids, gen.finish_reason) == ("abc", [9, 7], "length")
    assert gen.top_ids == [[7, 3, 5, 1, 8], [7]]
    assert gen.top_logprobs == [[-0.5, -1.25, -1.25, -2.0, -3.0], [-0.1]]


def test_generation__chat__same_as_completion():
    entries = [{"token": "token_id:9", "logprob": -6.0,
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in TOPS.items()]}]
    chat, completion = Generation(), Generation()
    chat.add_choice("chat", {"message": {"content": "a"}, "logprobs": {"content": entries}})
    completion.add_choice("completion", {"text": "a", "logprobs": {"tokens": ["token_id:9"],
                                                                   "top_logprobs": [TOPS]}})
    assert chat == completion


def test_generation__token_strings_not_ids__names_the_token():
    with pytest.raises(ModelNodeError, match=r"^model node returned token 'def', not 'token_id:<id>'$"):
        Generation().add_choice("completion", {"text": "def", "logprobs": {
            "tokens": ["def"], "top_logprobs": [{"def": -0.1}]}})
