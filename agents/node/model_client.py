"""Talking to a model node through its OpenAI/vLLM API only: generate, tokenize, prefill.

Parsing is pure: the token ids and top-k logprobs come from the `logprobs` fields, whose token
strings are `"token_id:<id>"` because the executor asks for `return_tokens_as_token_ids`. The
same parser reads a whole response and each streamed chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from agents.protocol.requests import InferenceRequest
from agents.verification.calibration import ARTIFACT_TOP_K, VALIDATOR_TOP_K

TOP_K = ARTIFACT_TOP_K
PREFILL_TOP = VALIDATOR_TOP_K


class ModelNodeError(Exception):
    pass


def token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise ModelNodeError(f"model node returned token {token!r}, not 'token_id:<id>'")
    return int(token[len("token_id:"):])


@dataclass
class Generation:
    """What the executor keeps of an answer: the text, and per position the token and its top-k."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    finish_reason: str | None = None

    def add_choice(self, kind: str, choice: dict[str, Any]) -> None:
        """Append one response's or one chunk's choice 0."""
        if kind == "chat":
            self.text += (choice.get("message") or choice.get("delta") or {}).get("content") or ""
            entries = (choice.get("logprobs") or {}).get("content") or []
            for e in entries:
                tops = {t["token"]: t["logprob"] for t in e.get("top_logprobs") or []}
                self._position(e["token"], tops)
        else:
            self.text += choice.get("text") or ""
            lp = choice.get("logprobs") or {}
            for tok, tops in zip(lp.get("tokens") or [], lp.get("top_logprobs") or []):
                self._position(tok, tops or {})
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def _position(self, token: str, tops: dict[str, float]) -> None:
        # highest logprob first, ties by id: (-logprob, id) sorts so with no key function
        best = sorted([(-lp, token_id(t)) for t, lp in tops.items()])[:TOP_K]
        self.token_ids.append(token_id(token))
        self.top_ids.append([i for _, i in best])
        self.top_logprobs.append([-lp for lp, _ in best])


def generation_call(request: InferenceRequest, served_model: str, seed: int,
                    stream: bool) -> tuple[str, dict]:
    """(path, body) of the model node call that executes `request` with seeded sampling."""
    body: dict[str, Any] = {
        "model": served_model, "max_tokens": request.max_tokens,
        "temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k,
        "seed": seed, "return_tokens_as_token_ids": True, "stream": stream,
    }
    if request.kind == "chat":
        body["messages"] = [m.model_dump() for m in request.messages]
        body.update(logprobs=True, top_logprobs=TOP_K)
        return "/v1/chat/completions", body
    body.update(prompt=request.prompt, logprobs=TOP_K)
    return "/v1/completions", body


def strip_logprobs(payload: dict) -> dict:
    """The client did not ask for logprobs; the executor's copy goes into the artifact."""
    for choice in payload.get("choices") or []:
        choice.pop("logprobs", None)
    return payload


def tokenize_body(request: InferenceRequest, served_model: str) -> dict:
    if request.kind == "chat":
        return {"model": served_model, "messages": [m.model_dump() for m in request.messages],
                "add_generation_prompt": True}
    return {"model": served_model, "prompt": request.prompt}


@dataclass(frozen=True)
class ModelSpec:
    """What the validator needs to know of its model besides logprobs."""

    eos_token_id: int
    vocab_size: int


async def model_spec(http: httpx.AsyncClient, base: str, eos_token_id: int | None = None,
                     vocab_size: int | None = None) -> ModelSpec:
    """The configured values when both are set (a vLLM model node: its /health is empty), else
    from our model node's /health."""
    if eos_token_id is not None and vocab_size is not None:
        return ModelSpec(eos_token_id, vocab_size)
    r = await http.get(base.rstrip("/") + "/health")
    _check(r, "health")
    try:
        health = r.json()
        return ModelSpec(int(health["eos_token_id"]), int(health["vocab_size"]))
    except (ValueError, KeyError, TypeError):
        raise ModelNodeError(
            "model node /health lacks eos_token_id and vocab_size (vLLM serves neither): set "
            "model_eos_token_id and model_vocab_size in the node's settings") from None


async def tokenize(http: httpx.AsyncClient, base: str, request: InferenceRequest,
                   served_model: str) -> list[int]:
    r = await http.post(base.rstrip("/") + "/tokenize", json=tokenize_body(request, served_model))
    _check(r, "tokenize")
    return [int(t) for t in r.json()["tokens"]]


async def prefill(http: httpx.AsyncClient, base: str, served_model: str, ids: list[int]) -> bytes:
    """One teacher-forced pass over `ids`: the raw response, whose vLLM `prompt_logprobs` hold
    one entry per position (parse it with `prompt_logprobs`, off the event loop: at K = 256 it is
    about 3 MB of JSON for a 165-token sequence, tens of ms of CPU)."""
    body = {"model": served_model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": PREFILL_TOP}
    r = await http.post(base.rstrip("/") + "/v1/completions", json=body)
    _check(r, "prefill")
    return r.content


def prompt_logprobs(raw: bytes) -> list:
    """The `prompt_logprobs` of a raw completion response."""
    return orjson.loads(raw)["choices"][0]["prompt_logprobs"]


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code != 200:
        raise ModelNodeError(f"model node {what} failed ({r.status_code}): {r.text[:300]}")
