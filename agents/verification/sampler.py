"""Seeded sampling: token = argmax_i(z_i / T + G_i) over the masked logits z.

G is the counter-based Gumbel noise of `noise.py`, so sampling is a pure function of the logits,
the sampling parameters, the seed and the position. Temperature 0 is greedy decoding (no noise).
The torch version drives the CPU engine and the vLLM plugin; the numpy version is what a
validator uses to recompute a position from its own logprobs. Both apply the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.verification import noise


@dataclass(frozen=True)
class SamplingParams:
    """The sampling parameters that the client signs, as the sampler reads them."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables the top-k mask

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def mask_numpy(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Temperature-scaled logits with tokens outside top-k / top-p set to -inf (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    if not params.greedy:
        z = z / params.temperature
    if params.top_k and params.top_k < z.shape[-1]:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    if params.top_p < 1.0:
        order = np.argsort(-z, kind="stable")
        probs = np.exp(z[order] - z[order[0]])
        probs /= probs.sum()
        # keep the smallest prefix whose mass reaches top_p (the crossing token included)
        cut = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        z = z.copy()
        z[order[cut:]] = -np.inf
    return z


def sample_numpy(logits: np.ndarray, params: SamplingParams, seed: int, position: int) -> int:
    z = mask_numpy(logits, params)
    if params.greedy:
        return int(np.argmax(z))
    return int(np.argmax(z + noise.gumbel_numpy(seed, position, z.shape[-1])))


def mask_torch(logits, params: SamplingParams):
    """torch twin of `mask_numpy` for one position (1-D logits), computed in float32."""
    import torch

    z = logits.float()
    if not params.greedy:
        z = z / params.temperature
    if params.top_k and params.top_k < z.shape[-1]:
        kth = torch.topk(z, params.top_k).values[-1]
        z = torch.where(z < kth, torch.full_like(z, float("-inf")), z)
    if params.top_p < 1.0:
        sorted_z, order = torch.sort(z, descending=True, stable=True)
        cum = torch.cumsum(torch.softmax(sorted_z.double(), dim=-1), dim=-1)
        cut = int(torch.searchsorted(cum, torch.tensor([params.top_p], dtype=cum.dtype))[0]) + 1
        z = z.clone()
        z[order[cut:]] = float("-inf")
    return z


def sample_torch(logits, params: SamplingParams, seed: int, position: int) -> int:
    """Sample one token from 1-D logits at `position` of the output."""
    import torch

    z = mask_torch(logits, params)
    if params.greedy:
        return int(torch.argmax(z))
    g = noise.gumbel_torch(seed, position, z.shape[-1], device=z.device)
    return int(torch.argmax(z.double() + g))
