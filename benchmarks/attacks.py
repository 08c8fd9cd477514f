"""Executors for the detection benchmark: the honest one under engine variations, and the attacks.

Every executor takes a batch of `Case`s and returns, per case, the request it claims was signed
and the artifact it publishes (its own token count is what it reports on chain). Attacks that
change what runs but not what is claimed keep the signed request; the request-hash attack
publishes what it really ran. Executors run batched (`Engine.generate_batch`, left padding)
where the attack allows it, because that is both cheaper and one of the honest variations.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from agents.mlnode.engine import Engine, Generation
from agents.protocol.requests import InferenceRequest
from agents.verification.artifact import LP_SCALE, Artifact
from agents.verification.calibration import ARTIFACT_TOP_K
from agents.verification.sampler import SamplingParams

K = ARTIFACT_TOP_K
SYSTEM_PREFIX = "# You are a careful Python programmer. Answer with code only.\n"


@dataclass(frozen=True)
class Case:
    request: InferenceRequest  # what the client signed
    prompt_ids: list[int]  # its tokenization (the prompt includes SYSTEM_PREFIX)
    user_ids: list[int]  # the tokenization without SYSTEM_PREFIX (for the prompt attack)
    seed: int


@dataclass(frozen=True)
class Published:
    request: InferenceRequest  # the request inside the artifact
    artifact: Artifact
    raw_logprobs: np.ndarray | None = None  # the executor's unrounded top-k (honest runs only)


@dataclass
class Engines:
    ref: Engine
    sub: Engine
    int8: Engine | None = None
    int4: Engine | None = None


def fake_quantize(engine: Engine, bits: int, group: int | None) -> Engine:
    """A copy of `engine` whose nn.Linear weights (lm_head included) are rounded to `bits`-bit
    symmetric integers, per output row (group=None) or per `group` input columns, and computed
    back in float32: the numerics of weight-only quantization without an integer kernel."""
    model = copy.deepcopy(engine.model)
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                g = w.reshape(w.shape[0], -1, group or w.shape[1])
                scale = g.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
                w.copy_((torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(w.shape))
    return Engine(model, engine.tokenizer, f"{engine.name}-int{bits}", engine.spec_hash)


def _generate(engine: Engine, cases: Sequence[Case], seeds=None, params=None, prompts=None,
              batch: bool = True) -> list[Generation]:
    req = cases[0].request
    params = params or req.sampling
    seeds = seeds or [c.seed for c in cases]
    prompts = prompts or [c.prompt_ids for c in cases]
    if batch:
        return engine.generate_batch(prompts, params, seeds, req.max_tokens, K)
    return [engine.generate(p, params, s, req.max_tokens, K) for p, s in zip(prompts, seeds)]


def _publish(case: Case, gen_ids, topk_ids, topk_lps, request=None) -> Published:
    request = request or case.request
    return Published(request, Artifact.build(request, case.seed, gen_ids, topk_ids, topk_lps))


def _from_generations(cases, gens, requests=None) -> list[Published]:
    requests = requests or [c.request for c in cases]
    return [_publish(c, g.output_ids, g.topk_ids, g.topk_logprobs, r) for c, g, r in zip(cases, gens, requests)]


def _honest(cases, gens) -> list[Published]:
    return [replace(p, raw_logprobs=g.topk_logprobs) for p, g in zip(_from_generations(cases, gens), gens)]


def _rescore(engine: Engine, case: Case, output_ids) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `engine`'s prefill over the case's prompt + the given output tokens."""
    pf = engine.prefill(list(case.prompt_ids) + list(output_ids), K, start=len(case.prompt_ids))
    return pf.topk_ids, pf.topk_logprobs


# -- honest variations ---------------------------------------------------------------------


def honest_single(e: Engines, cases, threads: int = 1) -> list[Published]:
    torch.set_num_threads(threads)
    return _honest(cases, _generate(e.ref, cases, batch=False))


def honest_batch(e: Engines, cases, threads: int = 1) -> list[Published]:
    torch.set_num_threads(threads)
    return _honest(cases, _generate(e.ref, cases, batch=True))


# -- attacks -----------------------------------------------------------------------------------


def substitute(e: Engines, cases):
    return _from_generations(cases, _generate(e.sub, cases))


def int8(e: Engines, cases):
    return _from_generations(cases, _generate(e.int8, cases))


def int4(e: Engines, cases):
    return _from_generations(cases, _generate(e.int4, cases))


def prefill_attack(e: Engines, cases):
    """The substitute writes the text, the reference supplies the logprobs."""
    out = []
    for c, g in zip(cases, _generate(e.sub, cases)):
        ids, lps = _rescore(e.ref, c, g.output_ids)
        out.append(_publish(c, g.output_ids, ids, lps))
    return out


def wrong_seed(e: Engines, cases):
    """Samples with another inference's seed (a replayed or guessed seed), claims the right one."""
    seeds = [cases[(i + 1) % len(cases)].seed for i in range(len(cases))]
    return _from_generations(cases, _generate(e.ref, cases, seeds=seeds))


def no_seed(e: Engines, cases):
    """Free sampling: fresh randomness, which is what an unmodified sampler does."""
    return _from_generations(cases, _generate(e.ref, cases, seeds=[secrets.randbits(64) for _ in cases]))


def _params(cases, **changes) -> SamplingParams:
    return replace(cases[0].request.sampling, **changes)


def temperature_lower(e: Engines, cases):
    t = cases[0].request.temperature
    return _from_generations(cases, _generate(e.ref, cases, params=_params(cases, temperature=round(t - 0.2, 3))))


def temperature_higher(e: Engines, cases):
    t = cases[0].request.temperature
    return _from_generations(cases, _generate(e.ref, cases, params=_params(cases, temperature=round(t + 0.2, 3))))


def top_p_ignored(e: Engines, cases):
    """The client signed top_p = 0.9 (see SIGNED); the executor samples the whole distribution."""
    return _from_generations(cases, _generate(e.ref, cases, params=_params(cases, top_p=1.0)))


def top_p_narrowed(e: Engines, cases):
    """The client signed top_p = 1.0; the executor samples from the top 80% only."""
    return _from_generations(cases, _generate(e.ref, cases, params=_params(cases, top_p=0.8)))


def truncation(e: Engines, cases):
    """Stops halfway without EOS and bills the shorter answer."""
    out = []
    for c, g in zip(cases, _generate(e.ref, cases)):
        cut = max(1, len(g.output_ids) // 2)
        out.append(_publish(c, g.output_ids[:cut], g.topk_ids[:cut], g.topk_logprobs[:cut]))
    return out


def early_eos(e: Engines, cases):
    """Ends halfway with an EOS token that was not sampled; the logprobs stay honest (the
    distribution at the cut depends only on the tokens before it)."""
    out = []
    for c, g in zip(cases, _generate(e.ref, cases)):
        cut = max(0, len(g.output_ids) // 2 - 1)
        ids = g.output_ids[:cut] + [e.ref.eos_id]
        out.append(_publish(c, ids, g.topk_ids[: cut + 1], g.topk_logprobs[: cut + 1]))
    return out


def copied_logprobs(e: Engines, cases):
    """Honest tokens, logprobs from the cheap substitute's prefill."""
    out = []
    for c, g in zip(cases, _generate(e.ref, cases)):
        ids, lps = _rescore(e.sub, c, g.output_ids)
        out.append(_publish(c, g.output_ids, ids, lps))
    return out


def fabricated_logprobs(e: Engines, cases):
    """Honest tokens and top-k ids, logprobs replaced by a plausible profile: each rank's mean."""
    out = []
    for c, g in zip(cases, _generate(e.ref, cases)):
        profile = np.broadcast_to(g.topk_logprobs.mean(axis=0), g.topk_logprobs.shape)
        out.append(_publish(c, g.output_ids, g.topk_ids, profile))
    return out


def perturbed_logprobs(e: Engines, cases):
    """Honest tokens, logprobs nudged by N(0, 0.02) noise: a subtle fabrication."""
    rng = np.random.default_rng(7)
    out = []
    for c, g in zip(cases, _generate(e.ref, cases)):
        lps = np.minimum(g.topk_logprobs + rng.normal(0, 0.02, g.topk_logprobs.shape), 0)
        order = np.argsort(-lps, axis=1, kind="stable")
        out.append(_publish(c, g.output_ids, np.take_along_axis(g.topk_ids, order, 1),
                            np.take_along_axis(lps, order, 1)))
    return out


def prompt_dropped_published(e: Engines, cases):
    """Runs without the system prompt and publishes the request it ran: the hash gives it away."""
    ran = [c.request.model_copy(update={"prompt": c.request.prompt.removeprefix(SYSTEM_PREFIX)}) for c in cases]
    gens = _generate(e.ref, cases, prompts=[c.user_ids for c in cases])
    return _from_generations(cases, gens, ran)


def prompt_dropped_hidden(e: Engines, cases):
    """Runs without the system prompt but publishes the signed request."""
    return _from_generations(cases, _generate(e.ref, cases, prompts=[c.user_ids for c in cases]))


def same_as_honest(pub: Published, honest: Published) -> bool:
    """Whether an attack published what the honest executor would have (same request and seed):
    the same request, tokens and top-k ids, and logprobs within one quantization step (batching
    noise). Such an attack did no harm and no validator can tell it from honesty."""
    a, h = pub.artifact, honest.artifact
    return (a.request_json == h.request_json and np.array_equal(a.output_ids, h.output_ids)
            and np.array_equal(a.topk_ids, h.topk_ids)
            and bool(np.abs(a.topk_logprobs - h.topk_logprobs).max(initial=0) <= 1 / LP_SCALE))


# what the client signs differently from the default cases, per attack
SIGNED = {"top_p_ignored": {"top_p": 0.9}}

ATTACKS: dict[str, Callable[[Engines, Sequence[Case]], list[Published]]] = {
    f.__name__: f
    for f in (
        substitute, int8, int4, prefill_attack, wrong_seed, no_seed, temperature_lower,
        temperature_higher, top_p_ignored, top_p_narrowed, truncation, early_eos,
        copied_logprobs, fabricated_logprobs, perturbed_logprobs, prompt_dropped_published,
        prompt_dropped_hidden,
    )
}
