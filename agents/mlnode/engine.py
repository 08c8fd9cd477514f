"""The CPU inference engine: torch + transformers, with its own KV-cache decode loop.

One prefill forward over the prompt, then one forward per output token on the cached keys and
values. Tokens come from the seeded sampler (`agents.verification.sampler.sample_torch`) at output
positions 0, 1, ...; a missing seed means seed 0 with the same sampler, so every answer is
reproducible.

Logprobs are `log_softmax` of the model's raw float32 logits, taken *before* temperature and the
top-k/top-p masks. They describe the model, not the sampling parameters, which is what a validator
compares against its own prefill (vLLM's `prompt_logprobs` are raw in the same way). The EOS token,
when sampled, is part of `output_ids` and has its logprobs, so an early stop is checkable too.

Weights are stored in float16 and computed in float32.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from agents.verification.sampler import SamplingParams, sample_torch


@dataclass(frozen=True)
class Token:
    """One generated token as `Engine.stream` yields it."""

    id: int
    logprob: float
    topk_ids: np.ndarray  # [k] int64, best first
    topk_logprobs: np.ndarray  # [k] float32
    finish_reason: str | None  # "stop" (EOS), "length" (max_tokens) on the last token, else None


@dataclass(frozen=True)
class Generation:
    output_ids: list[int]
    token_logprobs: np.ndarray  # [n] float32: logprob of each output token
    topk_ids: np.ndarray  # [n, k] int64
    topk_logprobs: np.ndarray  # [n, k] float32
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True)
class Prefill:
    """Per scored position i >= start of the ids (row i - start): the distribution that predicts
    ids[i]; start = 1 scores every position."""

    topk_ids: np.ndarray  # [n - start, k] int64
    topk_logprobs: np.ndarray  # [n - start, k] float32
    token_logprobs: np.ndarray  # [n - start] float32: logprob of ids[i]
    token_ranks: np.ndarray  # [n - start] int64: 1 + number of tokens with a higher logprob


def _collect(tokens: Iterator[Token], k: int) -> Generation:
    steps = list(tokens)
    return Generation(
        output_ids=[t.id for t in steps],
        token_logprobs=np.array([t.logprob for t in steps], dtype=np.float32),
        topk_ids=np.stack([t.topk_ids for t in steps]).astype(np.int64).reshape(len(steps), k),
        topk_logprobs=np.stack([t.topk_logprobs for t in steps]).astype(np.float32)
        .reshape(len(steps), k),
        finish_reason=steps[-1].finish_reason,
    )


class Engine:
    def __init__(self, model: LlamaForCausalLM, tokenizer, name: str, spec_hash: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.spec_hash = spec_hash  # "0x" + sha256 hex of manifest.json
        self.eos_id: int = tokenizer.eos_token_id
        self.vocab_size: int = model.config.vocab_size
        self.max_model_len: int = model.config.max_position_embeddings

    @classmethod
    def load(cls, model_dir: str | Path, threads: int | None = None) -> "Engine":
        """Load a model folder written by scripts/train_model.py. `threads` is process-wide."""
        model_dir = Path(model_dir)
        if threads is not None:
            torch.set_num_threads(threads)
        manifest_bytes = (model_dir / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        hf_logging.disable_progress_bar()  # a server's log is no place for a progress bar
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        spec_hash = "0x" + hashlib.sha256(manifest_bytes).hexdigest()
        return cls(model, tokenizer, manifest["name"], spec_hash)

    # -- forward passes ---------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, cache=None, keep: int = 1, **kwargs):
        """The logits of the last `keep` positions (float32) and the grown KV cache."""
        out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep,
                         **kwargs)
        return out.logits.float(), out.past_key_values

    def check_length(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt < 1:
            raise ValueError("prompt must contain at least one token")
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if n_prompt + max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the context "
                f"length of {self.max_model_len} tokens"
            )

    def _token(self, logits: torch.Tensor, params: SamplingParams, seed: int, position: int,
               k: int, max_tokens: int) -> Token:
        token = sample_torch(logits, params, seed, position)
        lp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(lp, k)
        if token == self.eos_id:
            finish = "stop"
        elif position == max_tokens - 1:
            finish = "length"
        else:
            finish = None
        return Token(token, float(lp[token]), top.indices.numpy(), top.values.numpy(), finish)

    # -- generation -------------------------------------------------------------------------

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None,
               max_tokens: int, logprobs: int = 0) -> Iterator[Token]:
        """Yield the output tokens one by one; the last one carries the finish reason."""
        self.check_length(len(prompt_ids), max_tokens)
        logits, cache = self._forward(torch.tensor([list(prompt_ids)]), None)
        yield from self._decode(logits, cache, params, seed, max_tokens, logprobs)

    def score_and_stream(self, prompt_ids: Sequence[int], k: int, params: SamplingParams,
                         seed: int | None, max_tokens: int,
                         logprobs: int = 0) -> tuple[Prefill, Iterator[Token]]:
        """`prefill(prompt_ids, k)` and `stream(...)` from one forward pass over the prompt, as
        vLLM serves prompt_logprobs: every position's logits give the scores, the last one the
        first token, and decoding goes on from that pass's cache. The scores are computed now,
        the tokens as they are read."""
        self.check_length(len(prompt_ids), max_tokens)
        logits, cache = self._forward(torch.tensor([list(prompt_ids)]), None, keep=len(prompt_ids))
        scores = self._scores(logits[0, :-1], prompt_ids, k, 1)
        return scores, self._decode(logits, cache, params, seed, max_tokens, logprobs)

    def _decode(self, logits: torch.Tensor, cache, params: SamplingParams, seed: int | None,
                max_tokens: int, logprobs: int) -> Iterator[Token]:
        """The tokens from the prompt's last logits on: sample, then one forward per token."""
        seed = 0 if seed is None else seed
        for position in range(max_tokens):
            tok = self._token(logits[0, -1], params, seed, position, logprobs, max_tokens)
            yield tok
            if tok.finish_reason:
                return
            logits, cache = self._forward(torch.tensor([[tok.id]]), cache)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, seed: int | None,
                 max_tokens: int, logprobs: int = 0) -> Generation:
        return _collect(self.stream(prompt_ids, params, seed, max_tokens, logprobs), logprobs)

    def generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                       seeds: Sequence[int | None], max_tokens: int,
                       logprobs: int = 0) -> list[Generation]:
        """Generate for several prompts at once: left padding, an attention mask, and position
        ids counted from each row's first real token. Matches `generate` up to float noise."""
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        for p in prompts:
            self.check_length(len(p), max_tokens)
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.eos_id] * (width - len(p)) + list(p) for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(ids, None, attention_mask=mask, position_ids=positions)
        rows: list[list[Token]] = [[] for _ in prompts]
        for position in range(max_tokens):
            next_ids = []
            for r, row in enumerate(rows):
                if row and row[-1].finish_reason:
                    next_ids.append(self.eos_id)  # a finished row idles on a throwaway token
                    continue
                seed = 0 if seeds[r] is None else seeds[r]
                row.append(self._token(logits[r, -1], params, seed, position, logprobs, max_tokens))
                next_ids.append(row[-1].id)
            if all(row[-1].finish_reason for row in rows):
                break
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            logits, cache = self._forward(
                torch.tensor(next_ids)[:, None], cache, attention_mask=mask, position_ids=positions
            )
        return [_collect(iter(row), logprobs) for row in rows]

    # -- scoring ----------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, ids: Sequence[int], k: int, start: int = 1) -> Prefill:
        """One forward over `ids` (vLLM's prompt_logprobs): position i >= 1 is scored by the
        distribution computed at i - 1. Only positions `start`.. are scored (row i - start): a
        validator needs the output positions alone, so it skips the vocabulary projection,
        log_softmax and top-k over the prompt."""
        if len(ids) > self.max_model_len:
            raise ValueError(
                f"{len(ids)} tokens exceed the context length of {self.max_model_len} tokens"
            )
        if not 1 <= start <= len(ids):
            raise ValueError(f"start must be in [1, {len(ids)}], got {start}")
        out = self.model(input_ids=torch.tensor([list(ids)]), use_cache=False,
                         logits_to_keep=len(ids) - start + 1)
        return self._scores(out.logits[0, :-1].float(), ids, k, start)

    @torch.inference_mode()
    def _scores(self, logits: torch.Tensor, ids: Sequence[int], k: int, start: int) -> Prefill:
        """Row i - start of `logits` predicts ids[i], for i = start.."""
        lp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(list(ids[start:]))[:, None]
        token_lp = lp.gather(1, target)
        top = torch.topk(lp, k, dim=-1)
        return Prefill(
            topk_ids=top.indices.numpy(),
            topk_logprobs=top.values.numpy(),
            token_logprobs=token_lp[:, 0].numpy(),
            token_ranks=((lp > token_lp).sum(-1) + 1).numpy(),
        )
