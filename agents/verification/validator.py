"""One-pass validation: judge an artifact against the validator's own teacher-forced prefill.

The validator runs its pinned model once over prompt + the executor's output tokens and keeps,
per output position t, its top-K logprobs plus the logprob and rank of the executor's token
(vLLM `prompt_logprobs`). Then, with no further model calls:

1. Sampling. The executor's token x must be the perturbed argmax of lp/T + G (G = the seeded
   Gumbel noise of `noise.py`, masks of `sampler.py`; greedy when T = 0). Only the validator's
   top-K and x have known logprobs, so every judgement is one-sided:
   - a FAULT needs proof: a known candidate that surely survives the masks and beats x by more
     than `tie_eps` (in logit units), or x surely masked. Anything else is at worst unresolved,
     so honest numerics inside `tie_eps` are never accused;
   - a position is RESOLVED when nothing can beat x: every known candidate loses, and the
     tokens outside the top-K, whose logprobs are at most the K-th, cannot win even with their
     actual noise (bounded with the K-th logprob) or are surely masked. Unresolved positions are
     counted in the metrics, not accused.
   Mask decisions use intervals: each logprob is trusted to +-tie_eps/2, and the unknown tail's
   weight is bounded from the top-K's mass, the K-th logprob and the vocabulary size.
2. Distribution. The executor's top-k logprobs must match the validator's: per entry within
   `lp_max`, on average within `lp_mean`, and no validator token missing from the executor's
   top-k while above its k-th logprob.
3. Length. The answer ends at EOS or at max_tokens and not earlier, has nothing after EOS, and
   has as many tokens as the chain's completion_tokens (EOS included).

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from eth_utils import keccak

from agents.verification import noise
from agents.verification.artifact import LP_FLOOR, Artifact
from agents.verification.calibration import DEFAULT, Thresholds
from agents.verification.sampler import SamplingParams

MAX_SCORE = 10_000
_OUT, _MAYBE, _IN = 0, 1, 2


@dataclass(frozen=True, eq=False)
class PrefillScores:
    """The validator's own view of each output position, from one teacher-forced prefill."""

    topk_ids: np.ndarray  # (n, K) best first
    topk_logprobs: np.ndarray  # (n, K) log_softmax of the raw logits (before temperature)
    token_logprobs: np.ndarray  # (n,) logprob of the executor's token at each position
    token_ranks: np.ndarray  # (n,) its 1-based rank in the vocabulary

    @property
    def n(self) -> int:
        return self.topk_ids.shape[0]

    @classmethod
    def from_prompt_logprobs(cls, prompt_logprobs: list, output_ids, top_k: int) -> "PrefillScores":
        """Parse vLLM's `prompt_logprobs` over prompt + output: keep the last len(output) entries.

        Each entry maps "<token id>" to {"logprob", "rank", ...} and holds the top `top_k` plus
        the actual token (top_k + 1 entries when the actual token is outside the top-k).
        """
        output_ids = [int(i) for i in output_ids]
        n = len(output_ids)
        if n == 0 or len(prompt_logprobs) <= n or prompt_logprobs[-n] is None:
            raise ValueError(f"prompt_logprobs has {len(prompt_logprobs)} entries, need more than {n}")
        ids, lps, token_lps, ranks = [], [], [], []
        in_order = list(range(1, top_k + 1))
        for entry, actual in zip(prompt_logprobs[-n:], output_ids):
            chosen = entry.get(str(actual), entry.get(actual))
            if chosen is None:
                raise ValueError(f"prompt_logprobs entry lacks the actual token {actual}")
            keys, values = list(entry), list(entry.values())
            entry_ranks = [v["rank"] for v in values]
            if entry_ranks[:top_k] != in_order:  # not already the top-k first, in rank order
                order = [j for j in sorted(range(len(values)), key=entry_ranks.__getitem__)
                         if int(keys[j]) != actual or entry_ranks[j] <= top_k][:top_k]
                keys, values = [keys[j] for j in order], [values[j] for j in order]
            if len(keys) < top_k:
                raise ValueError(f"prompt_logprobs entry has {len(keys)} top entries, expected {top_k}")
            ids.append([int(i) for i in keys[:top_k]])
            lps.append([v["logprob"] for v in values[:top_k]])
            token_lps.append(chosen["logprob"])
            ranks.append(chosen["rank"])
        return cls(np.array(ids, np.int64), np.array(lps), np.array(token_lps), np.array(ranks, np.int64))


@dataclass(frozen=True)
class Fault:
    position: int | None  # output position, or None for the whole artifact
    kind: str  # request | format | seed | length | after_eos | truncated | sampling | early_eos
    #            | missed_eos | masked | logprobs | distribution
    detail: str


@dataclass(frozen=True)
class Metrics:
    n: int = 0
    # positions where no token can beat the executor's (module doc); without `resolve_outsiders`, a
    # position that an unseen token could win with the largest possible noise counts as unresolved
    resolved: int = 0
    ties: int = 0  # positions accepted as honest near-ties
    lp_mean: float = 0.0  # mean |executor - validator| over the executor's top-k entries
    lp_max: float = 0.0
    overlap: float = 0.0  # mean fraction of the executor's top-k ids in the validator's top-k


@dataclass(frozen=True)
class Verdict:
    passed: bool
    score: int  # 0..10000: the share of clean positions; 0 on any whole-artifact fault
    faults: list[Fault]
    metrics: Metrics = field(default_factory=Metrics)


def precheck(artifact: Artifact, request_hash: bytes, vocab_size: int) -> list[Fault]:
    """What the validator checks before spending a prefill: the signed request and the ids."""
    actual = keccak(artifact.request_json)
    if actual != request_hash:
        return [Fault(None, "request", f"request hash 0x{actual.hex()} != signed 0x{request_hash.hex()}")]
    largest = max(int(artifact.output_ids.max(initial=0)), int(artifact.topk_ids.max(initial=0)))
    if largest >= vocab_size:
        return [Fault(None, "format", f"token id {largest} outside the vocabulary of {vocab_size}")]
    if artifact.n == 0:
        return [Fault(None, "length", "no output tokens")]
    return []


def validate(
    artifact: Artifact,
    prefill: PrefillScores,
    *,
    request_hash: bytes,
    seed: int,
    completion_tokens: int,
    eos_id: int,
    vocab_size: int,
    thresholds: Thresholds = DEFAULT,
    resolve_outsiders: bool = False,
) -> Verdict:
    """The verdict on one artifact. `request_hash` and `completion_tokens` come from the chain,
    `seed` from the inference id (`noise.seed_from_inference_id`); the prefill covers exactly
    the artifact's output positions. `resolve_outsiders` makes `Metrics.resolved` exact (see
    `check_sampling`) at the cost of hashing the vocabulary per position; the verdict is the same."""
    faults = precheck(artifact, request_hash, vocab_size)
    if faults:
        return Verdict(False, 0, faults)
    if prefill.n != artifact.n:
        raise ValueError(f"prefill covers {prefill.n} positions, the artifact has {artifact.n}")
    request = artifact.request()
    faults += _length_faults(artifact.output_ids, completion_tokens, request.max_tokens, eos_id)
    if artifact.seed != seed:
        faults.append(Fault(None, "seed", f"artifact seed {artifact.seed} != inference seed {seed}"))

    sampling_faults, outcomes = check_sampling(prefill, artifact.output_ids, request.sampling, seed, eos_id,
                                               vocab_size, thresholds.tie_eps, resolve_outsiders)
    faults += sampling_faults
    resolved, ties = outcomes.count("resolved"), outcomes.count("tie")

    diffs, overlap = distribution_diffs(artifact, prefill)
    for t in np.nonzero(diffs.max(axis=1) > thresholds.lp_max)[0]:
        faults.append(Fault(int(t), "logprobs", f"top-k logprob off by {diffs[t].max():.4f} > {thresholds.lp_max}"))
    unsorted = np.nonzero((np.diff(artifact.topk_logprobs, axis=1) > 0).any(axis=1))[0]
    faults += [Fault(int(t), "logprobs", "top-k logprobs not in descending order") for t in unsorted]
    lp_mean = float(diffs[:, : artifact.k].mean())
    if lp_mean > thresholds.lp_mean:
        faults.append(Fault(None, "distribution", f"mean top-k logprob difference {lp_mean:.4f} > {thresholds.lp_mean}"))

    faults.sort(key=lambda f: (-1 if f.position is None else f.position, f.kind))
    if any(f.position is None for f in faults):
        score = 0
    else:
        bad = {f.position for f in faults if f.position < artifact.n}
        score = MAX_SCORE * (artifact.n - len(bad)) // artifact.n
        if any(f.position >= artifact.n for f in faults):  # truncation: the missing tail is bad
            score = min(score, MAX_SCORE * artifact.n // request.max_tokens)
    metrics = Metrics(artifact.n, resolved, ties, lp_mean, float(diffs.max()), overlap)
    return Verdict(not faults, score, faults, metrics)


def _length_faults(output_ids: np.ndarray, completion_tokens: int, max_tokens: int, eos_id: int) -> list[Fault]:
    n = len(output_ids)
    faults = []
    if n != completion_tokens:
        faults.append(Fault(None, "length", f"{n} output tokens but the chain records {completion_tokens}"))
    eos_at = np.nonzero(output_ids[:-1] == eos_id)[0]
    if eos_at.size:
        faults.append(Fault(int(eos_at[0]) + 1, "after_eos", f"tokens follow the EOS at position {int(eos_at[0])}"))
    elif output_ids[-1] != eos_id and n < max_tokens:
        faults.append(Fault(n, "truncated", f"ends after {n} of max_tokens {max_tokens} tokens without EOS"))
    return faults


def sampling_noise(seed: int, prefill: PrefillScores, output_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seeded noise of every position's top-K candidates, (n, K), and of the executor's token
    at each position, (n,), each in one array operation. numpy's vectorized log may differ from
    the executor's in the last bit; `tie_eps` is some 10**12 times larger."""
    positions = np.arange(prefill.n)
    return (noise.gumbel_at(seed, positions[:, None], prefill.topk_ids),
            noise.gumbel_at(seed, positions, output_ids))


def check_sampling(
    prefill: PrefillScores,
    output_ids: np.ndarray,
    params: SamplingParams,
    seed: int,
    eos_id: int,
    vocab_size: int,
    tie_eps: float,
    resolve_outsiders: bool = False,
) -> tuple[list[Fault], list[str]]:
    """Judge the executor's token at every output position: (faults, outcome per position), an
    outcome being "fault", "resolved", "tie" (accepted near-tie) or "unresolved".

    Vectorized over positions: each row holds the top-K plus one column for the executor's token,
    an inert -inf when it is inside the top-K. Only the masks are decided row by row, and only
    when the request sets one. An unseen token may still beat a position's winner when the
    largest noise any token can get would let it; `resolve_outsiders` then hashes the vocabulary
    for the actual noise, which only tells "resolved" from "unresolved" (the metrics), never a
    fault, so a node's validator leaves it off."""
    n, k = prefill.topk_ids.shape
    rows = np.arange(n)
    x = np.asarray(output_ids, dtype=np.int64)
    lps = prefill.topk_logprobs.astype(np.float64)
    lp_k = lps[:, -1]  # every token outside the top-K has at most this logprob
    found = prefill.topk_ids == x[:, None]
    inside = found.any(axis=1)
    xi = np.where(inside, found.argmax(axis=1), k)
    ids = np.concatenate([prefill.topk_ids, x[:, None]], axis=1)
    token_lp = np.where(inside, -math.inf, prefill.token_logprobs.astype(np.float64))
    lps = np.concatenate([lps, token_lp[:, None]], axis=1)
    known = k + ~inside  # candidates per row: the top-K, and the token when outside it
    faults: list[Fault] = []
    outcomes = ["unresolved"] * n

    def accuse(t: int, kind: str, detail: str) -> None:
        faults.append(Fault(t, "early_eos" if x[t] == eos_id else kind, detail))
        outcomes[t] = "fault"

    if params.greedy:
        best = lps.argmax(axis=1)
        margins = lps[rows, best] - lps[rows, xi]
        for t in rows.tolist():
            if margins[t] > tie_eps:
                accuse(t, "missed_eos" if ids[t, best[t]] == eos_id else "sampling",
                       f"token {x[t]} is {margins[t]:.4f} below the greedy choice {int(ids[t, best[t]])}")
            else:
                outcomes[t] = "resolved" if best[t] == xi[t] else "tie"
        return faults, outcomes

    temp, half = params.temperature, tie_eps / 2
    status = np.full(lps.shape, _IN)
    outsider = np.full(n, _MAYBE)
    if params.top_k or params.top_p < 1.0:
        for t in rows.tolist():
            m = known[t]
            row = lps[t, :m]
            tail = _tail_weight(row, float(lp_k[t]), vocab_size - m, temp, half, params.top_k)
            status[t, :m], outsider[t] = _mask_status(row, float(lp_k[t]), vocab_size > m, tail, params, half)
    top_noise, token_noise = sampling_noise(seed, prefill, x)
    gumbel = np.concatenate([top_noise, token_noise[:, None]], axis=1)
    score_x = lps[rows, xi] + temp * gumbel[rows, xi]
    margins = (lps + temp * gumbel) - score_x[:, None]  # T * (s_c - s_x)
    margins[rows, xi] = -math.inf
    beaten_by = np.where(status == _IN, margins, -math.inf)
    c = beaten_by.argmax(axis=1)
    closest = np.where(status != _OUT, margins, -math.inf).max(axis=1)
    # an unseen token (logprob <= lp_k) that could still win, first with the largest possible noise
    reachable = (vocab_size > known) & (outsider != _OUT) & (lp_k + temp * noise.GUMBEL_MAX - score_x > tie_eps)
    for t in rows.tolist():
        if status[t, xi[t]] == _OUT:
            accuse(t, "masked", f"token {x[t]} is outside the top-k/top-p mask")
        elif beaten_by[t, c[t]] > tie_eps:
            accuse(t, "missed_eos" if ids[t, c[t]] == eos_id else "sampling",
                   f"token {x[t]} scores {beaten_by[t, c[t]]:.4f} below token {int(ids[t, c[t]])}")
        elif status[t, xi[t]] != _IN or closest[t] > tie_eps:
            pass  # unresolved
        elif reachable[t] and not (resolve_outsiders and lp_k[t] + temp * noise.gumbel_max_outside(
                seed, t, vocab_size, ids[t, :known[t]]) - score_x[t] <= tie_eps):
            pass  # unresolved: an unseen token may win, or was not checked
        else:
            outcomes[t] = "tie" if closest[t] > 0 else "resolved"
    return faults, outcomes


def _tail_weight(lps: np.ndarray, lp_k: float, n_out: int, temp: float, half: float, top_k: int) -> float:
    """Upper bound of sum(exp((lp_j + half) / T)) over the tokens outside the known set, relative to
    exp(max(lps) / T). Known: each has lp_j <= lp_k, and together at most the mass the known set
    leaves."""
    if n_out <= 0:
        return 0.0
    if top_k:
        n_out = min(n_out, top_k)
    mass = max(0.0, 1.0 - float(np.exp(lps).sum()))
    top = float(lps.max())
    by_count = n_out * math.exp((lp_k - top) / temp)
    if temp <= 1.0:
        by_mass = mass * math.exp(lp_k * (1 / temp - 1) - top / temp)
    else:
        by_mass = n_out ** (1 - 1 / temp) * mass ** (1 / temp) * math.exp(-top / temp)
    return min(by_count, by_mass) * math.exp(half / temp)


class _Sorted:
    """One row's logprobs in ascending order, to count the candidates above a bound by bisection
    instead of comparing every pair: a position's masks cost O(K log K), not O(K^2)."""

    def __init__(self, lps: np.ndarray):
        self.order = np.argsort(lps, kind="stable")
        self.values = lps[self.order]
        self.m = len(lps)

    def above(self, bound: np.ndarray) -> np.ndarray:
        """How many logprobs exceed each bound."""
        return self.m - np.searchsorted(self.values, bound, side="right")

    def at_least(self, bound: np.ndarray) -> np.ndarray:
        """How many logprobs reach each bound."""
        return self.m - np.searchsorted(self.values, bound, side="left")

    def top_sums(self, weights: np.ndarray) -> np.ndarray:
        """sums[i]: the sum of `weights` over the i largest logprobs (i = 0..m)."""
        return np.concatenate([[0.0], np.cumsum(weights[self.order][::-1])])


def _mask_status(
    lps: np.ndarray, lp_k: float, has_out: bool, tail: float, params: SamplingParams, half: float
) -> tuple[np.ndarray, int]:
    """For each known candidate: surely masked (_OUT), surely kept (_IN) or undecided (_MAYBE),
    for an executor whose logprobs differ from `lps` by at most `half` each; and the best status
    a token outside the known set (logprob <= lp_k) can have."""
    m = len(lps)
    status = np.full(m, _IN)
    outsider = _MAYBE
    ranked = _Sorted(lps)
    if params.top_k:
        surely_above = ranked.above(lps + 2 * half)
        could_above = ranked.at_least(lps - 2 * half) - 1  # less the candidate itself
        # tokens outside the known set may rank above c only if c is within reach of lp_k
        could_above = could_above + np.where(has_out & (lp_k >= lps - 2 * half), params.top_k, 0)
        status = np.where(
            surely_above >= params.top_k, _OUT, np.where(could_above < params.top_k, _IN, _MAYBE)
        )
        if ranked.above(lp_k + 2 * half) >= params.top_k:
            outsider = _OUT
    if params.top_p < 1.0:
        # every known candidate and, last, an outsider, all against the top-k statuses
        top_p = _top_p_status(lps, ranked, lp_k, has_out, tail, status, params, half)
        status = np.minimum(status, top_p[:m])
        outsider = min(outsider, int(top_p[m]))
    return status, outsider


def _top_p_status(lps, ranked: _Sorted, lp_k, has_out, tail, topk_status, params, half) -> np.ndarray:
    """Per candidate (each known one, then a token outside the known set with logprob lp_k):
    bounds on the mass ranked before it in the distribution the top-k mask leaves, as a status.
    Each bound is a sum over the candidates above (or below) a logprob bound, so it is read from
    prefix sums over the sorted row."""
    temp = params.temperature
    top = float(lps.max())
    kept = topk_status == _IN
    maybe_kept = topk_status != _OUT
    w_lo = np.where(kept, np.exp((lps - half - top) / temp), 0.0)
    w_hi = np.where(maybe_kept, np.exp((lps + half - top) / temp), 0.0)
    lo_sums, hi_sums = ranked.top_sums(w_lo), ranked.top_sums(w_hi)
    lp_c = np.append(lps, lp_k)
    # the candidate's own weight is among those that could rank above it, and never above it
    own_lo, own_hi = np.append(w_lo, 0.0), np.append(w_hi, 0.0)
    could = ranked.at_least(lp_c - 2 * half)  # could rank above c (with c itself)
    surely = ranked.above(lp_c + 2 * half)  # surely rank above c
    out_above = has_out & (lp_k >= lp_c - 2 * half)
    a_hi = np.maximum(hi_sums[could] - own_hi, 0.0) + np.where(out_above, tail, 0.0)
    b_lo = lo_sums[-1] - lo_sums[could] + own_lo
    a_lo = lo_sums[surely]
    b_hi = hi_sums[-1] - hi_sums[surely] + (tail if has_out else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mass_hi = np.where(a_hi + b_lo > 0, a_hi / (a_hi + b_lo), 1.0)
        mass_lo = np.where(a_lo + b_hi > 0, a_lo / (a_lo + b_hi), 0.0)
    return np.where(mass_lo >= params.top_p, _OUT, np.where(mass_hi < params.top_p, _IN, _MAYBE))


def distribution_diffs(artifact: Artifact, prefill: PrefillScores) -> tuple[np.ndarray, float]:
    """Per position: |executor - validator| for each of the executor's k entries, plus one column
    for the largest excess of a validator token that the executor left out of its top-k.
    Both sides are clamped to the artifact's logprob floor. Also the mean id overlap.

    Vectorized over positions (a per-position loop was half of a validation's Python time); all
    arithmetic is float64 on the same values, so the figures are those of the loop exactly."""
    n, k = artifact.topk_ids.shape
    v_ids = prefill.topk_ids
    v_lps = np.maximum(prefill.topk_logprobs, LP_FLOOR).astype(np.float64)
    floor_out = np.maximum(v_lps[:, -1], LP_FLOOR)[:, None]  # outside the validator's top-K
    token_lp = np.maximum(prefill.token_logprobs.astype(np.float64), LP_FLOOR)[:, None]
    e_ids = artifact.topk_ids
    e_lps = artifact.topk_logprobs.astype(np.float64)
    same = e_ids[:, :, None] == v_ids[:, None, :]  # (n, k, K): ids are unique within a row
    known = same.any(axis=2)
    validator_lp = np.take_along_axis(v_lps, same.argmax(axis=2), axis=1)
    is_token = ~known & (e_ids == artifact.output_ids[:, None])  # the executor's token, rank > K
    diffs = np.zeros((n, k + 1))
    diffs[:, :k] = np.where(known, np.abs(e_lps - validator_lp),
                            np.where(is_token, np.abs(e_lps - token_lp), np.maximum(0.0, e_lps - floor_out)))
    missing = ~same.any(axis=1)  # (n, K): validator tokens absent from the executor's top-k
    excess = np.where(missing, v_lps, -np.inf).max(axis=1) - e_lps.min(axis=1)
    diffs[:, k] = np.where(missing.any(axis=1), np.maximum(0.0, excess), 0.0)
    overlap = sum(known.mean(axis=1).tolist())  # summed in order, as the loop did
    return diffs, overlap / max(1, n)
