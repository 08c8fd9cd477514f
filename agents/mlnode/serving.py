"""The model node's logic, with no routing: OpenAI/vLLM requests in, response dicts or SSE out.

Every check runs before any work, so a bad request raises `APIError` (one error shape, naming the
field) and a stream starts only for a request that is valid. Token strings in logprobs are the
decoded single tokens, or `"token_id:<id>"` with `return_tokens_as_token_ids` (vLLM), which is how
an executor gets the exact output ids over the OpenAI API. The EOS token is an output token
(counted in usage, present in logprobs) but not part of the text.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram

from agents.mlnode.engine import Engine, Generation, Prefill, Token
from agents.mlnode.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    _Sampling,
)
from agents.verification.sampler import SamplingParams


class APIError(Exception):
    """A client error: rendered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value",
                 status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": self.code}}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mlnode_requests", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("mlnode_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry)
        self.prompt_tokens = Counter("mlnode_prompt_tokens", "prompt tokens processed",
                                     registry=self.registry)
        self.generation_tokens = Counter("mlnode_generation_tokens", "output tokens generated",
                                         registry=self.registry)


def sse(obj: dict | str) -> str:
    """One server-sent event; orjson encodes, as the non-streaming answers (and their Fragments)."""
    return f"data: {obj if isinstance(obj, str) else orjson.dumps(obj).decode()}\n\n"


class Detokenizer:
    """Incremental text of a growing id list. A byte-level token can end inside a UTF-8
    character; its text is held back until the character is complete."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token_id: int, final: bool) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


@dataclass(frozen=True)
class _Job:
    """A validated request, ready to run."""

    prompt_ids: list[int]
    params: SamplingParams
    seed: int | None
    max_tokens: int
    k: int  # top-k logprobs per output token


class OpenAIServing:
    def __init__(self, engine: Engine, served_name: str | None = None):
        self.engine = engine
        # a cheating node serves other weights under the reference name; spec_hash stays honest
        self.name = served_name or engine.name
        self.metrics = Metrics()
        tok = engine.tokenizer
        self._strings = [tok.decode([i]) for i in range(engine.vocab_size)]
        # vLLM's return_tokens_as_token_ids labels
        self._id_labels = [f"token_id:{i}" for i in range(engine.vocab_size)]
        self._special = set(tok.all_special_ids)
        # prompt_logprobs entries as pre-encoded JSON around each token's logprob and rank:
        # '"<id>":{"logprob":' <logprob> ',"rank":<rank>' ',"decoded_token":"<label>"},'
        self._entry_heads = [b'"%d":{"logprob":' % i for i in range(engine.vocab_size)]
        self._entry_tails = {
            as_ids: [b',"decoded_token":' + orjson.dumps(label) + b"},"
                     for label in (self._id_labels if as_ids else self._strings)]
            for as_ids in (False, True)}

    # -- plain endpoints --------------------------------------------------------------------

    def health(self) -> dict:
        e = self.engine
        return {"status": "ok", "model": self.name, "spec_hash": e.spec_hash,
                "max_model_len": e.max_model_len, "eos_token_id": e.eos_id,
                "vocab_size": e.vocab_size}

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.name, "object": "model", "created": 0, "owned_by": "nullius",
            "root": self.engine.name, "max_model_len": self.engine.max_model_len,
        }]}

    def tokenize(self, req: TokenizeRequest) -> dict:
        self._check_model(req.model)
        if req.messages is not None:
            ids = self._chat_ids(req.messages, req.add_generation_prompt)
        else:
            ids = self._encode(req.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": self.engine.max_model_len}

    # -- validation -------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(f"The model `{model}` does not exist.", "model", "model_not_found")

    def _encode(self, text: str) -> list[int]:
        return self.engine.tokenizer(text, add_special_tokens=False).input_ids

    def _chat_ids(self, messages, add_generation_prompt: bool = True) -> list[int]:
        text = self.engine.tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )
        return self._encode(text)

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._encode(prompt)  # non-empty text is at least one byte-level token
        bad = [i for i in prompt if not 0 <= i < self.engine.vocab_size]
        if bad:
            raise APIError(f"prompt: token id {bad[0]} is outside [0, {self.engine.vocab_size})",
                           "prompt")
        return list(prompt)

    def _job(self, req: _Sampling, ids: list[int], max_tokens: int | None, k: int) -> _Job:
        limit = self.engine.max_model_len
        if max_tokens is None:
            max_tokens = limit - len(ids)
        if len(ids) + max_tokens > limit or max_tokens < 1:
            raise APIError(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                f"length of {limit} tokens", "max_tokens", "context_length_exceeded",
            )
        params = SamplingParams(req.temperature, req.top_p, max(req.top_k, 0))
        return _Job(ids, params, req.seed, max_tokens, k)

    # -- running ----------------------------------------------------------------------------

    def _start(self, job: _Job, score_k: int | None = None) -> tuple[Prefill | None, Iterator[Token]]:
        """The answer's tokens as they are generated and, with `score_k`, the prompt's scores
        (vLLM's prompt_logprobs) from the same forward pass over the prompt."""
        self.metrics.prompt_tokens.inc(len(job.prompt_ids))
        if score_k is None:
            prefill = None
            tokens = self.engine.stream(job.prompt_ids, job.params, job.seed, job.max_tokens, job.k)
        else:
            prefill, tokens = self.engine.score_and_stream(job.prompt_ids, score_k, job.params, job.seed,
                                                           job.max_tokens, job.k)
        return prefill, self._counted(tokens)

    def _counted(self, tokens: Iterator[Token]) -> Iterator[Token]:
        for tok in tokens:
            self.metrics.generation_tokens.inc()
            yield tok

    def _label(self, token_id: int, as_ids: bool) -> str:
        return (self._id_labels if as_ids else self._strings)[token_id]

    def _piece(self, token_id: int) -> str:
        """The token's contribution to the text: special tokens contribute nothing."""
        return "" if token_id in self._special else self._strings[token_id]

    @staticmethod
    def _usage(job: _Job, n_out: int) -> dict:
        n = len(job.prompt_ids)
        return {"prompt_tokens": n, "completion_tokens": n_out, "total_tokens": n + n_out}

    @staticmethod
    def _head(kind: str, prefix: str) -> dict:
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time())}

    # -- /v1/completions --------------------------------------------------------------------

    def completion(self, req: CompletionRequest) -> dict | Iterator[str]:
        """The response dict, or for `stream` an iterator of SSE events ending with [DONE]."""
        self._check_model(req.model)
        job = self._job(req, self._prompt_ids(req.prompt), req.max_tokens, req.logprobs or 0)
        echo_logprobs = req.echo and req.logprobs is not None
        score_k = None
        if req.prompt_logprobs is not None or echo_logprobs:
            score_k = max(req.prompt_logprobs or 0, req.logprobs or 0)
        prefill, generated = self._start(job, score_k)
        head = self._head("text_completion", "cmpl") | {"model": self.name}
        if req.stream:
            return self._completion_events(req, job, prefill, generated, head)
        tokens = list(generated)
        prompt_text = self.engine.tokenizer.decode(job.prompt_ids) if req.echo else ""
        text = self.engine.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True)
        logprobs = None
        if req.logprobs is not None:
            logprobs = self._completion_logprobs(tokens, req.return_tokens_as_token_ids,
                                                 len(prompt_text))
            if req.echo:
                logprobs = _concat(self._echo_logprobs(req, job, prefill), logprobs)
        choice = _choice(prompt_text + text, tokens[-1].finish_reason, logprobs)
        if req.prompt_logprobs is not None:
            choice["prompt_logprobs"] = self._prompt_logprobs(req, job, prefill)
        return head | {"choices": [choice], "usage": self._usage(job, len(tokens))}

    def _completion_events(self, req: CompletionRequest, job: _Job, prefill: Prefill | None,
                           generated: Iterator[Token], head: dict) -> Iterator[str]:
        as_ids = req.return_tokens_as_token_ids
        prompt_text = self.engine.tokenizer.decode(job.prompt_ids) if req.echo else ""
        if req.echo or req.prompt_logprobs is not None:
            # the prompt part comes first, in a chunk of its own, as vLLM streams it
            echo_logprobs = None
            if req.echo and req.logprobs is not None:
                echo_logprobs = self._echo_logprobs(req, job, prefill)
            first = _choice(prompt_text, None, echo_logprobs)
            if req.prompt_logprobs is not None:
                first["prompt_logprobs"] = self._prompt_logprobs(req, job, prefill)
            yield sse(head | {"choices": [first]})
        detok = Detokenizer(self.engine.tokenizer)
        offset, n_out = len(prompt_text), 0
        for tok in generated:
            n_out += 1
            delta = detok.add(tok.id, final=tok.finish_reason is not None)
            logprobs = None
            if req.logprobs is not None:
                logprobs = self._completion_logprobs([tok], as_ids, offset)
            offset += len(self._piece(tok.id))
            yield sse(head | {"choices": [_choice(delta, tok.finish_reason, logprobs)]})
        if req.stream_options and req.stream_options.include_usage:
            yield sse(head | {"choices": [], "usage": self._usage(job, n_out)})
        yield sse("[DONE]")

    def _top(self, ids: np.ndarray, lps: np.ndarray, token_id: int, token_lp: float,
             as_ids: bool) -> dict:
        top = {self._label(int(i), as_ids): float(lp) for i, lp in zip(ids, lps)}
        top.setdefault(self._label(token_id, as_ids), token_lp)
        return top

    def _completion_logprobs(self, tokens: Sequence[Token], as_ids: bool, offset: int) -> dict:
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(self._piece(t.id))
        return {
            "tokens": [self._label(t.id, as_ids) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [self._top(t.topk_ids, t.topk_logprobs, t.id, t.logprob, as_ids)
                             for t in tokens],
            "text_offset": offsets,
        }

    def _echo_logprobs(self, req: CompletionRequest, job: _Job, prefill: Prefill) -> dict:
        """Logprobs of the echoed prompt: the first token has none (nothing predicts it)."""
        ids, k, as_ids = job.prompt_ids, req.logprobs, req.return_tokens_as_token_ids
        offsets, offset = [], 0
        for i in ids:
            offsets.append(offset)
            offset += len(self._piece(i))
        return {
            "tokens": [self._label(i, as_ids) for i in ids],
            "token_logprobs": [None] + [float(x) for x in prefill.token_logprobs],
            "top_logprobs": [None] + [
                self._top(prefill.topk_ids[r, :k], prefill.topk_logprobs[r, :k], ids[r + 1],
                          float(prefill.token_logprobs[r]), as_ids)
                for r in range(len(ids) - 1)
            ],
            "text_offset": offsets,
        }

    def _prompt_logprobs(self, req: CompletionRequest, job: _Job,
                         prefill: Prefill) -> list[orjson.Fragment | None]:
        """vLLM's prompt_logprobs: None, then per position the top-k and the actual token.

        A validator asks for the top 256 at every position: tens of thousands of entries. Each
        position leaves as one orjson Fragment of JSON joined from pre-encoded pieces (the key,
        the label) and its logprobs encoded by orjson in one call, the same bytes orjson writes
        for the dicts, about four times faster than building those."""
        ids, k, as_ids = job.prompt_ids, req.prompt_logprobs, req.return_tokens_as_token_ids
        heads, tails = self._entry_heads, self._entry_tails[as_ids]
        ranks = [b',"rank":%d' % r for r in range(1, k + 1)]
        top_ids = prefill.topk_ids[:, :k].tolist()
        top_lps = orjson.dumps(prefill.topk_logprobs[:, :k].tolist())
        actual_lps, actual_ranks = prefill.token_logprobs.tolist(), prefill.token_ranks.tolist()
        # one list of k logprob encodings per position, cut from one encoding of them all
        rows = top_lps[2:-2].split(b"],[") if top_ids else []
        pieces: list[bytes] = [b""] * (4 * k)
        pieces[2::4] = ranks
        out: list[orjson.Fragment | None] = [None]
        for r, (row_ids, row_lps) in enumerate(zip(top_ids, rows)):
            pieces[0::4] = [heads[i] for i in row_ids]
            pieces[1::4] = row_lps.split(b",") if k else []
            pieces[3::4] = [tails[i] for i in row_ids]
            entries = b"".join(pieces)
            actual = ids[r + 1]
            if actual not in row_ids:
                entries += (heads[actual] + orjson.dumps(actual_lps[r])
                            + b',"rank":%d' % actual_ranks[r] + tails[actual])
            out.append(orjson.Fragment(b"{" + entries[:-1] + b"}"))  # less the last comma
        return out

    # -- /v1/chat/completions ---------------------------------------------------------------

    def chat(self, req: ChatCompletionRequest) -> dict | Iterator[str]:
        self._check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError("top_logprobs requires logprobs to be true", "top_logprobs")
        k = (req.top_logprobs or 0) if req.logprobs else 0
        job = self._job(req, self._chat_ids(req.messages), req.max_tokens, k)
        head = self._head("chat.completion", "chatcmpl") | {"model": self.name}
        _, generated = self._start(job)
        if req.stream:
            return self._chat_events(req, job, generated, head | {"object": "chat.completion.chunk"})
        tokens = list(generated)
        text = self.engine.tokenizer.decode([t.id for t in tokens], skip_special_tokens=True)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": self._chat_logprobs(req, tokens),
            "finish_reason": tokens[-1].finish_reason,
        }
        return head | {"choices": [choice], "usage": self._usage(job, len(tokens))}

    def _chat_logprobs(self, req: ChatCompletionRequest, tokens: Sequence[Token]) -> dict | None:
        if not req.logprobs:
            return None
        as_ids = req.return_tokens_as_token_ids

        def entry(token_id: int, lp: float) -> dict:
            label = self._label(token_id, as_ids)
            return {"token": label, "logprob": lp, "bytes": list(label.encode())}

        return {"content": [
            entry(t.id, t.logprob) | {"top_logprobs": [
                entry(int(i), float(lp)) for i, lp in zip(t.topk_ids, t.topk_logprobs)]}
            for t in tokens
        ]}

    def _chat_events(self, req: ChatCompletionRequest, job: _Job, generated: Iterator[Token],
                     head: dict) -> Iterator[str]:
        detok = Detokenizer(self.engine.tokenizer)
        yield sse(head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}]})
        n_out = 0
        for tok in generated:
            n_out += 1
            delta = detok.add(tok.id, final=tok.finish_reason is not None)
            yield sse(head | {"choices": [{
                "index": 0, "delta": {"content": delta},
                "logprobs": self._chat_logprobs(req, [tok]), "finish_reason": tok.finish_reason,
            }]})
        if req.stream_options and req.stream_options.include_usage:
            yield sse(head | {"choices": [], "usage": self._usage(job, n_out)})
        yield sse("[DONE]")


def _choice(text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
            "stop_reason": None}


def _concat(a: dict, b: dict) -> dict:
    return {key: a[key] + b[key] for key in a}
