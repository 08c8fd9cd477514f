"""The model node's HTTP API: in-process for the fine detail, and one real server process driven
by the official `openai` package."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import orjson
import pytest
from fastapi.testclient import TestClient

from agents.mlnode.api import MAX_BODY_BYTES, create_app
from agents.mlnode.serving import Detokenizer
from agents.node.model_client import PREFILL_TOP
from agents.protocol.requests import InferenceRequest
from agents.verification.artifact import Artifact
from agents.verification.calibration import ARTIFACT_TOP_K, VALIDATOR_TOP_K
from agents.verification.sampler import SamplingParams
from agents.verification.validator import PrefillScores, validate

REPO = Path(__file__).resolve().parents[2]
REF = REPO / "models" / "ref-tiny"
SUB = REPO / "models" / "sub-nano"
NAME = "nullius/ref-tiny"
PROMPT = "def main():\n    parser = "


def spec_hash(folder: Path) -> str:
    return "0x" + hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(REF, threads=2)) as c:
        yield c


@pytest.fixture(scope="module")
def engine(client):
    return client.app.state.serving.engine


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json={"model": NAME, "prompt": PROMPT} | body)
    assert r.status_code == 200, r.text
    return r.json()


def error(response) -> dict:
    assert response.status_code == 400, response.text
    err = response.json()["error"]
    assert err["type"] == "invalid_request_error"
    return err


def prompt_tokens_seen(client) -> float:
    line = re.search(r"^mlnode_prompt_tokens_total (\S+)$", client.get("/metrics").text, re.M)
    return float(line.group(1))


def events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n")
    return [json.loads(line[6:]) for line in text.split("\n\n")[:-2]]


# -- plain endpoints ------------------------------------------------------------------------------

def test_health__names_model_and_spec_hash(client):
    assert client.get("/health").json() == {
        "status": "ok", "model": NAME, "spec_hash": spec_hash(REF), "max_model_len": 512,
        "eos_token_id": 0, "vocab_size": 4096,
    }


def test_models__lists_the_served_model(client):
    data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in data] == [(NAME, 512)]


def test_served_name__disguises_the_name_but_not_the_spec_hash():
    with TestClient(create_app(SUB, served_name=NAME, threads=2)) as c:
        health = c.get("/health").json()
        assert (health["model"], health["spec_hash"]) == (NAME, spec_hash(SUB))
        assert spec_hash(SUB) != spec_hash(REF)
        assert c.post("/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": 1}
                      ).status_code == 200


def test_tokenize__prompt_and_chat(client, engine):
    r = client.post("/tokenize", json={"model": NAME, "prompt": PROMPT}).json()
    assert r == {"tokens": engine.tokenizer(PROMPT).input_ids, "count": len(r["tokens"]),
                 "max_model_len": 512}
    chat = client.post("/tokenize", json={"model": NAME, "messages": [
        {"role": "user", "content": "hi"}]}).json()
    assert engine.tokenizer.decode(chat["tokens"]) == "<|user|>\nhi<|end|>\n<|assistant|>\n"


def test_tokenize__both_inputs__400(client):
    err = error(client.post("/tokenize", json={"model": NAME, "prompt": "a", "messages": []}))
    assert err["message"] == "exactly one of 'prompt' or 'messages' must be set"


def test_metrics__count_requests_and_tokens(client):
    complete(client, max_tokens=3, temperature=0)
    text = client.get("/metrics").text
    assert 'mlnode_requests_total{route="/v1/completions",status="200"}' in text
    assert "mlnode_generation_tokens_total" in text


def test_detokenizer__holds_back_split_utf8_characters(engine):
    text = "naïve → ∑"
    ids = engine.tokenizer(text).input_ids
    detok = Detokenizer(engine.tokenizer)
    deltas = [detok.add(i, final=n == len(ids) - 1) for n, i in enumerate(ids)]
    assert len(ids) > len(text.split()) and "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


# -- completions ----------------------------------------------------------------------------------

def test_completion__greedy_matches_engine_and_counts_usage(client, engine):
    ids = engine.tokenizer(PROMPT).input_ids
    gen = engine.generate(ids, SamplingParams(temperature=0.0), None, 8)
    r = complete(client, max_tokens=8, temperature=0)
    assert r["object"] == "text_completion" and r["model"] == NAME
    assert r["choices"][0]["text"] == engine.tokenizer.decode(gen.output_ids,
                                                              skip_special_tokens=True)
    assert r["choices"][0]["finish_reason"] == gen.finish_reason
    assert r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(gen.output_ids),
                          "total_tokens": len(ids) + len(gen.output_ids)}


def test_completion__token_id_logprobs_give_the_exact_output(client, engine):
    ids = engine.tokenizer(PROMPT).input_ids
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=40)
    gen = engine.generate(ids, params, 77, 10, logprobs=3)
    r = complete(client, max_tokens=10, temperature=0.9, top_p=0.9, top_k=40, seed=77,
                 logprobs=3, return_tokens_as_token_ids=True)
    lp = r["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"token_id:{i}" for i in gen.output_ids]
    assert lp["token_logprobs"] == pytest.approx(gen.token_logprobs.tolist(), abs=1e-5)
    for tops, top_ids, token in zip(lp["top_logprobs"], gen.topk_ids, gen.output_ids):
        assert {f"token_id:{i}" for i in top_ids} | {f"token_id:{token}"} == set(tops)


def test_completion__prompt_logprobs_follow_vllm(client, engine):
    ids = engine.tokenizer(PROMPT).input_ids
    pre = engine.prefill(ids, 2)
    r = complete(client, prompt=ids, max_tokens=1, temperature=0, prompt_logprobs=2)
    plp = r["choices"][0]["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for pos in range(1, len(ids)):
        entry = plp[pos][str(ids[pos])]
        assert entry["rank"] == pre.token_ranks[pos - 1]
        assert entry["logprob"] == pytest.approx(float(pre.token_logprobs[pos - 1]), abs=1e-5)
        assert entry["decoded_token"] == engine.tokenizer.decode([ids[pos]])
        best = plp[pos][str(pre.topk_ids[pos - 1, 0])]
        assert best["rank"] == 1


@pytest.mark.parametrize("k, as_ids", [(256, True), (3, False), (0, True)])
def test_completion__prompt_logprobs__orjsons_bytes_of_the_vllm_dicts(client, engine, k, as_ids):
    """The pre-encoded entries are byte for byte what orjson writes for the same dicts (their
    values are checked against the engine in the test above): the top-k in rank order, then the
    actual token when it is outside them, with vLLM's labels."""
    ids = engine.tokenizer(PROMPT).input_ids
    body = client.post("/v1/completions", json=dict(
        model=NAME, prompt=ids, max_tokens=1, temperature=0, prompt_logprobs=k,
        return_tokens_as_token_ids=as_ids)).content
    plp = orjson.loads(body)["choices"][0]["prompt_logprobs"]
    start = body.index(b'"prompt_logprobs":') + len(b'"prompt_logprobs":')
    assert body[start:].startswith(orjson.dumps(plp))
    assert plp[0] is None and len(plp) == len(ids)
    for pos in range(1, len(ids)):
        entry = plp[pos]
        ranks = [v["rank"] for v in entry.values()]
        assert ranks[:k] == list(range(1, k + 1))
        assert len(entry) == k + (ranks[-1] > k) and str(ids[pos]) in entry
        for key, value in entry.items():
            label = f"token_id:{key}" if as_ids else engine.tokenizer.decode([int(key)])
            assert list(value) == ["logprob", "rank", "decoded_token"] and value["decoded_token"] == label


def test_completion__validator_prefill_at_top_k__engine_scores_and_honest_artifact_passes(client, engine):
    """The node validator's path (`model_client.prefill`): prompt_logprobs at VALIDATOR_TOP_K over
    prompt + output, parsed by `PrefillScores.from_prompt_logprobs`, judges an honest answer."""
    req = InferenceRequest(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0.7, max_price=1,
                           nonce=1, deadline=2_000_000_000, client="0x" + "11" * 20)
    prompt, seed = engine.tokenizer(PROMPT).input_ids, 77
    gen = engine.generate(prompt, req.sampling, seed, req.max_tokens, ARTIFACT_TOP_K)
    artifact = Artifact.build(req, seed, gen.output_ids, gen.topk_ids, gen.topk_logprobs)
    r = complete(client, prompt=prompt + gen.output_ids, max_tokens=1, temperature=0.0,
                 prompt_logprobs=PREFILL_TOP)
    scores = PrefillScores.from_prompt_logprobs(r["choices"][0]["prompt_logprobs"], gen.output_ids, PREFILL_TOP)
    own = engine.prefill(prompt + gen.output_ids, VALIDATOR_TOP_K, start=len(prompt))
    assert scores.topk_ids.shape == (len(gen.output_ids), 256)
    assert np.array_equal(scores.topk_ids, own.topk_ids) and np.array_equal(scores.token_ranks, own.token_ranks)
    assert np.allclose(scores.topk_logprobs, own.topk_logprobs, rtol=0, atol=1e-6)
    verdict = validate(artifact, scores, request_hash=req.request_hash, seed=seed,
                       completion_tokens=artifact.n, eos_id=engine.eos_id, vocab_size=engine.vocab_size)
    assert verdict.passed and verdict.score == 10_000, verdict.faults


def test_completion__echo_prepends_the_prompt_and_its_logprobs(client, engine):
    n = len(engine.tokenizer(PROMPT).input_ids)
    r = complete(client, max_tokens=4, temperature=0, echo=True, logprobs=1)
    choice = r["choices"][0]
    plain = complete(client, max_tokens=4, temperature=0)["choices"][0]
    assert choice["text"] == PROMPT + plain["text"]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert len(choice["logprobs"]["tokens"]) == n + r["usage"]["completion_tokens"]
    assert choice["logprobs"]["text_offset"][n] == len(PROMPT)


def test_completion__stream_matches_non_stream(client):
    body = {"model": NAME, "prompt": PROMPT, "max_tokens": 12, "seed": 5, "logprobs": 2,
            "return_tokens_as_token_ids": True, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = events(client.post("/v1/completions", json=body).text)
    whole = complete(client, max_tokens=12, seed=5, logprobs=2, return_tokens_as_token_ids=True)
    choice = whole["choices"][0]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == choice["text"]
    assert [t for c in chunks[:-1] for t in c["choices"][0]["logprobs"]["tokens"]] == \
        choice["logprobs"]["tokens"]
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


# -- chat -----------------------------------------------------------------------------------------

def test_chat__answers_with_message_and_logprobs(client, engine):
    messages = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Return the sum of a list."}]
    r = client.post("/v1/chat/completions", json={
        "model": NAME, "messages": messages, "max_tokens": 6, "seed": 3, "logprobs": True,
        "top_logprobs": 2, "return_tokens_as_token_ids": True}).json()
    ids = engine.tokenizer(engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)).input_ids
    gen = engine.generate(ids, SamplingParams(), 3, 6, logprobs=2)
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": engine.tokenizer.decode(
        gen.output_ids, skip_special_tokens=True)}
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == [f"token_id:{i}" for i in gen.output_ids]
    assert [len(c["top_logprobs"]) for c in content] == [2] * len(gen.output_ids)
    assert r["usage"]["prompt_tokens"] == len(ids)


def test_chat__stream_ends_with_done(client):
    chunks = events(client.post("/v1/chat/completions", json={
        "model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        "stream": True}).text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat__top_logprobs_without_logprobs__400(client):
    err = error(client.post("/v1/chat/completions", json={
        "model": NAME, "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}))
    assert (err["message"], err["param"]) == ("top_logprobs requires logprobs to be true",
                                              "top_logprobs")


# -- bad input: 400 in OpenAI's error shape, naming the field ------------------------------------

@pytest.mark.parametrize("body, message, param, code", [
    ("{bad", "malformed JSON body: Expecting property name enclosed in double quotes", None,
     "invalid_json"),
    ("", "request body is missing", None, "invalid_value"),
    ({"model": "nullius/other", "prompt": "a"}, "The model `nullius/other` does not exist.",
     "model", "model_not_found"),
    ({"model": NAME, "prompt": "a", "max_tokens": 600},
     "prompt (1 tokens) + max_tokens (600) exceeds the context length of 512 tokens",
     "max_tokens", "context_length_exceeded"),
    ({"model": NAME, "prompt": "a", "temperature": 2.5},
     "temperature: Input should be less than or equal to 2", "temperature", "invalid_value"),
    ({"model": NAME, "prompt": "a", "top_p": 0}, "top_p: Input should be greater than 0",
     "top_p", "invalid_value"),
    ({"model": NAME, "prompt": "a", "logprobs": 257},
     "logprobs: Input should be less than or equal to 256", "logprobs", "invalid_value"),
    ({"model": NAME, "prompt": "a", "prompt_logprobs": 257},
     "prompt_logprobs: Input should be less than or equal to 256", "prompt_logprobs",
     "invalid_value"),
    ({"model": NAME, "prompt": "a", "seed": 2**64},
     "seed: Input should be less than 18446744073709551616", "seed", "invalid_value"),
    ({"model": NAME, "prompt": "a", "max_tokens": 0},
     "max_tokens: Input should be greater than or equal to 1", "max_tokens", "invalid_value"),
    ({"model": NAME, "prompt": [1, 4096]}, "prompt: token id 4096 is outside [0, 4096)",
     "prompt", "invalid_value"),
    ({"model": NAME, "prompt": "a" * 16385}, "prompt: at most 16384 characters", "prompt",
     "invalid_value"),
    ({"model": NAME, "prompt": "a", "best_of": 2}, "best_of: Extra inputs are not permitted",
     "best_of", "invalid_value"),
])
def test_completion__bad_input__400_naming_the_field(client, body, message, param, code):
    content = body if isinstance(body, str) else json.dumps(body)
    before = prompt_tokens_seen(client)
    err = error(client.post("/v1/completions", content=content,
                            headers={"content-type": "application/json"}))
    assert (err["message"], err["param"], err["code"]) == (message, param, code)
    assert prompt_tokens_seen(client) == before  # refused before any engine work


def test_oversized_body__413(client):
    r = client.post("/v1/completions", content=b" " * (MAX_BODY_BYTES + 1),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["message"] == f"request body is larger than {MAX_BODY_BYTES} bytes"


def test_unknown_route__404_in_error_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- a real server process and the official client ------------------------------------------------

@pytest.fixture(scope="module")
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.mlnode", "--model", str(REF), "--port", str(port),
         "--threads", "1"], cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("model node did not start")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_openai_client__completion_chat_and_stream(server, engine):
    api = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    r = api.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    ids = engine.tokenizer(PROMPT).input_ids
    gen = engine.generate(ids, SamplingParams(temperature=0.0), None, 6)
    assert r.choices[0].text == engine.tokenizer.decode(gen.output_ids, skip_special_tokens=True)
    assert r.usage.completion_tokens == len(gen.output_ids)

    streamed = api.completions.create(model=NAME, prompt=PROMPT, max_tokens=6, temperature=0,
                                      stream=True)
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text

    chat = api.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, seed=1, logprobs=True, top_logprobs=1)
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens


def test_openai_client__unknown_model__bad_request(server):
    api = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert exc.value.body["message"] == "The model `gpt-4` does not exist."
    assert exc.value.body["param"] == "model"
