"""Seeded Gumbel sampling inside vLLM: a V1 logits processor.

NOT RUN HERE: vLLM needs a CUDA build of torch and a GPU, which this project's machines lack. The
processor is written against vLLM's documented V1 interface
(`vllm.v1.sample.logits_processor.LogitsProcessor`: `__init__(vllm_config, device,
is_pin_memory)`, `update_state(BatchUpdate | None)`, `apply(logits)`, `is_argmax_invariant()`,
`validate_params(sampling_params)`); its tests drive it through a stand-in for that module.

For every row it picks the token exactly as the CPU engine does
(`agents.verification.sampler.sample_torch` on the raw logits, with the request's temperature,
top-p, top-k and seed, at output position `len(output_token_ids)`), then leaves that token as the
row's only finite logit. Whatever vLLM's sampler does next (temperature, top-k/top-p, a random
draw, or greedy) can only pick it. The request needs no extra fields: the executor sends the same
body as to the CPU engine, and a missing seed means seed 0 there as here. vLLM computes returned
logprobs from the raw logits before any processor (`logprobs_mode=raw_logprobs`, the default), so
they are the same raw logprobs the CPU engine reports.

Serve with: `vllm serve MODEL --logits-processors agents.mlnode.vllm_plugin:SeededGumbelProcessor`
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from agents.verification.sampler import SamplingParams, sample_torch


def nullius_params(sampling_params) -> tuple[SamplingParams, int]:
    """Our sampler's parameters and seed from a vLLM `SamplingParams` (top_k -1 means off)."""
    seed = 0 if sampling_params.seed is None else sampling_params.seed
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    params = SamplingParams(
        temperature=sampling_params.temperature,
        top_p=sampling_params.top_p,
        top_k=max(sampling_params.top_k, 0),
    )
    return params, seed


class SeededGumbelProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        nullius_params(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        # batch row -> (params, seed, the request's live list of output token ids)
        self.rows: dict[int, tuple[SamplingParams, int, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins, so vLLM must run it for greedy rows too

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # vLLM's documented order: removed, added, moved
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, sampling_params, _prompt_ids, output_ids in batch_update.added:
            self.rows[index] = (*nullius_params(sampling_params), output_ids)
        for a, b, direction in batch_update.moved:
            moving = self.rows.pop(a, None)
            if direction == MoveDirectionality.SWAP:
                staying = self.rows.pop(b, None)
                if staying is not None:
                    self.rows[a] = staying
            else:
                self.rows.pop(b, None)
            if moving is not None:
                self.rows[b] = moving

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (params, seed, output_ids) in self.rows.items():
            token = sample_torch(logits[row], params, seed, len(output_ids))
            logits[row] = float("-inf")
            logits[row, token] = 0.0
        return logits
