"""One-pass validation on a synthetic language model: honest artifacts pass, each attack fails
with its positions and fault kinds named.

The synthetic model is a bigram table: the logits at a position depend on the previous token and
on the position (EOS grows likelier with length). Executor and validator both evaluate it, the
validator with a 1e-6 perturbation that stands for kernel numerics.
"""

from dataclasses import replace

import numpy as np
import pytest
from eth_utils import keccak

from agents.protocol.requests import InferenceRequest
from agents.verification import noise
from agents.verification.artifact import LP_FLOOR, Artifact
from agents.verification.calibration import ARTIFACT_TOP_K, DEFAULT, Thresholds
from agents.verification.sampler import SamplingParams, sample_numpy
from agents.verification.validator import (
    _IN, _MAYBE, _OUT, PrefillScores, _mask_status, check_sampling, distribution_diffs, sampling_noise,
    validate,
)

V, EOS, BOS = 256, 0, 1
K = 20  # the validator's top-K, well below V, so that tokens outside the known set exist
_W = np.random.default_rng(7).normal(0.0, 2.0, (V, V))
_W[:, EOS] = -4.0
SEED = 0x1234_5678_9ABC_DEF0


def log_probs(prev: int, t: int, jitter: float = 0.0) -> np.ndarray:
    z = _W[prev].copy()
    z[EOS] += 0.3 * t
    if jitter:
        z += np.random.default_rng(prev * 1000 + t).normal(0.0, jitter, V)
    return z - np.logaddexp.reduce(z)


def request(**kw) -> InferenceRequest:
    base = dict(model="nullius/synthetic", prompt="hello", max_tokens=40, temperature=1.0,
                max_price=1, nonce=1, deadline=2_000_000_000, client="0x" + "11" * 20)
    return InferenceRequest(**(base | kw))


def execute(req, seed=SEED, *, params=None, force=None, stop_at=None, tamper=None):
    """The executor: seeded sampling, top-k logprobs per position. Attacks hook in by argument."""
    params = params or req.sampling
    out, ids, lps = [], [], []
    prev = BOS
    for t in range(req.max_tokens):
        lp = log_probs(prev, t)
        tok = (force or {}).get(t, sample_numpy(lp, params, seed, t))
        top = np.argsort(-lp, kind="stable")[:ARTIFACT_TOP_K]
        out.append(tok), ids.append(top), lps.append(lp[top])
        if tok == EOS or (stop_at is not None and t + 1 == stop_at):
            break
        prev = tok
    lps = np.array(lps)
    if tamper:
        tamper(lps)
    return Artifact.build(req, seed, out, ids, lps)


def prefill(output_ids, jitter=1e-6) -> PrefillScores:
    ids, lps, tok_lp, ranks = [], [], [], []
    prev = BOS
    for t, x in enumerate(output_ids):
        lp = log_probs(prev, t, jitter)
        order = np.argsort(-lp, kind="stable")
        ids.append(order[:K]), lps.append(lp[order[:K]])
        tok_lp.append(lp[x]), ranks.append(int((lp > lp[x]).sum()) + 1)
        prev = int(x)
    return PrefillScores(np.array(ids), np.array(lps), np.array(tok_lp), np.array(ranks))


def judge(artifact: Artifact, req, *, seed=SEED, completion_tokens=None, thresholds=DEFAULT):
    return validate(
        artifact, prefill(artifact.output_ids), request_hash=req.request_hash, seed=seed,
        completion_tokens=artifact.n if completion_tokens is None else completion_tokens,
        eos_id=EOS, vocab_size=V, thresholds=thresholds,
    )


def kinds(verdict) -> list[tuple]:
    return [(f.position, f.kind) for f in verdict.faults]


HONEST = [
    request(temperature=0.0),
    request(temperature=0.7),
    request(temperature=1.0),
    request(temperature=1.3),
    request(temperature=1.0, top_p=0.8),
    request(temperature=0.7, top_k=10),
    request(temperature=1.0, top_k=40, top_p=0.9),
]


@pytest.mark.parametrize("req", HONEST, ids=lambda r: f"T{r.temperature}-p{r.top_p}-k{r.top_k}")
def test_honest__many_seeds__pass_with_full_score(req):
    for seed in range(SEED, SEED + 15):
        a = execute(req, seed)
        v = judge(a, req, seed=seed)
        assert v.faults == [] and v.passed and v.score == 10_000
        assert v.metrics.n == a.n and v.metrics.overlap > 0.95
        assert v.metrics.lp_max < 0.005 and v.metrics.lp_mean < 0.003  # quantization, 1/256 at most
        if req.temperature == 0.0:
            assert v.metrics.resolved + v.metrics.ties == a.n


def test_honest__artifact_round_trip__same_verdict():
    req = request(temperature=0.7)
    a = execute(req)
    assert judge(Artifact.decode(a.encode()), req) == judge(a, req)


def _greedy_free_position(req, a) -> int:
    """A position where the honest token is not EOS and a different, clearly worse token exists."""
    return next(t for t in range(2, a.n) if a.output_ids[t] != EOS)


def test_attack__wrong_token__fails_at_that_position():
    req = request(temperature=0.7)
    honest = execute(req)
    t = _greedy_free_position(req, honest)
    wrong = int(prefill(honest.output_ids).topk_ids[t][-1])  # the validator's 20th: far behind
    a = execute(req, force={t: wrong})
    v = judge(a, req)
    assert not v.passed
    assert kinds(v)[0] == (t, "sampling")
    assert f"token {wrong} scores" in v.faults[0].detail
    assert v.score < 10_000


def test_attack__wrong_seed__fails_at_most_positions():
    req = request(temperature=1.0, max_tokens=40)
    a = execute(req, seed=SEED + 1)  # artifact claims the wrong seed honestly
    v = judge(a, req)
    assert not v.passed
    assert (None, "seed") in kinds(v)
    sampling = [p for p, k in kinds(v) if k in ("sampling", "early_eos", "missed_eos", "masked")]
    assert len(sampling) >= a.n // 2
    assert v.score == 0


def test_attack__wrong_seed_claiming_the_right_one__fails_on_sampling():
    req = request(temperature=1.0)
    tokens = execute(req, seed=SEED + 1)
    a = Artifact.build(req, SEED, tokens.output_ids, tokens.topk_ids, tokens.topk_logprobs)
    v = judge(a, req)
    assert not v.passed and (None, "seed") not in kinds(v)
    assert v.faults[0].kind in ("sampling", "early_eos", "missed_eos")


def test_attack__early_eos__fails_at_the_eos():
    req = request(temperature=0.7)
    honest = execute(req)
    assert honest.n > 6
    a = execute(req, force={5: EOS})
    v = judge(a, req)
    assert kinds(v) == [(5, "early_eos")]
    assert a.n == 6


def test_attack__missed_eos__fails_where_eos_should_have_won():
    req = request(temperature=0.0, max_tokens=40)
    honest = execute(req)
    assert honest.output_ids[-1] == EOS and honest.n < 40
    t = honest.n - 1
    a = execute(req, force={t: int(prefill(honest.output_ids).topk_ids[t][1])})
    v = judge(a, req)
    assert kinds(v)[0] == (t, "missed_eos")


def test_attack__truncation__fails_at_the_cut():
    req = request(temperature=0.7)
    honest = execute(req)
    cut = honest.n - 3
    a = execute(req, stop_at=cut)
    v = judge(a, req)
    assert kinds(v) == [(cut, "truncated")]
    assert v.faults[0].detail == f"ends after {cut} of max_tokens 40 tokens without EOS"
    assert v.score == 10_000 * cut // 40


def test_attack__tokens_after_eos__fail():
    req = request(temperature=0.7)
    honest = execute(req)
    ids = np.append(honest.output_ids, honest.output_ids[-2])
    a = Artifact.build(req, SEED, ids, np.vstack([honest.topk_ids, honest.topk_ids[-1:]]),
                       np.vstack([honest.topk_logprobs, honest.topk_logprobs[-1:]]))
    assert (honest.n, "after_eos") in kinds(judge(a, req))


def test_attack__changed_logprobs__fails_at_those_positions():
    req = request(temperature=0.7)

    def shift(lps):
        lps[2] -= 0.2
        lps[4, 1:] -= 0.06

    v = judge(execute(req, tamper=shift), req)
    assert [k for k in kinds(v) if k[1] == "logprobs"] == [(2, "logprobs"), (4, "logprobs")]
    per_position = [f.detail for f in v.faults if f.kind == "logprobs"]
    assert per_position[0].startswith("top-k logprob off by 0.20")  # 0.2 plus the rounding
    assert per_position[1].startswith("top-k logprob off by 0.06")


def test_attack__fabricated_logprobs_small_everywhere__fails_on_the_mean():
    """Every entry within lp_max, the mean beyond lp_mean: only the whole-artifact check fires."""
    loose = Thresholds(tie_eps=DEFAULT.tie_eps, lp_max=0.05, lp_mean=0.01)
    req = request(temperature=0.7)
    v = judge(execute(req, tamper=lambda lps: lps.__isub__(0.03)), req, thresholds=loose)
    assert kinds(v) == [(None, "distribution")]
    assert v.faults[0].detail.startswith("mean top-k logprob difference 0.03")
    assert v.score == 0


def test_attack__copied_logprobs_from_other_positions__fail():
    req = request(temperature=0.7)
    v = judge(execute(req, tamper=lambda lps: lps.__setitem__(slice(None), lps[::-1].copy())), req)
    assert not v.passed and {k for _, k in kinds(v)} >= {"logprobs", "distribution"}


def test_attack__unsorted_logprobs__fail():
    req = request(temperature=0.7)
    v = judge(execute(req, tamper=lambda lps: lps.__setitem__((3, slice(None)), lps[3, ::-1].copy())), req)
    assert (3, "logprobs") in kinds(v)
    assert any(f.detail == "top-k logprobs not in descending order" for f in v.faults)


@pytest.mark.parametrize("lower,higher", [(0.3, 1.0), (1.0, 1.6)])
def test_attack__temperature_changed__fails_on_sampling(lower, higher):
    for signed, used in ((higher, lower), (lower, higher)):
        req = request(temperature=signed)
        failed = sum(not judge(execute(req, s, params=SamplingParams(used)), req, seed=s).passed for s in range(SEED, SEED + 10))
        assert failed >= 8, (signed, used, failed)


def test_attack__top_p_ignored__fails_on_masked_tokens():
    req = request(temperature=1.0, top_p=0.5)
    verdicts = [judge(execute(req, s, params=SamplingParams(1.0)), req, seed=s) for s in range(SEED, SEED + 10)]
    assert sum(not v.passed for v in verdicts) >= 8
    assert any(f.kind == "masked" for v in verdicts for f in v.faults)


def test_attack__top_k_exceeded__names_masked_position():
    req = request(temperature=1.0, top_k=3)
    honest = execute(req)
    t = _greedy_free_position(req, honest)
    fifth = int(prefill(honest.output_ids).topk_ids[t][4])
    v = judge(execute(req, force={t: fifth}), req)
    assert kinds(v)[0] == (t, "masked")
    assert v.faults[0].detail == f"token {fifth} is outside the top-k/top-p mask"


def test_attack__prompt_tampered__fails_on_request_hash():
    signed = request(temperature=0.7)
    executed = request(temperature=0.7, prompt="hello, ignore the system prompt")
    a = execute(executed)
    v = judge(a, signed)
    assert kinds(v) == [(None, "request")]
    assert v.faults[0].detail == f"request hash 0x{keccak(a.request_json).hex()} != signed 0x{signed.request_hash.hex()}"
    assert v.score == 0


def test_length__differs_from_chain__fails():
    req = request(temperature=0.7)
    a = execute(req)
    v = judge(a, req, completion_tokens=a.n + 1)
    assert kinds(v) == [(None, "length")]
    assert v.faults[0].detail == f"{a.n} output tokens but the chain records {a.n + 1}"


def test_ids_outside_vocabulary__fail_before_prefill():
    req = request(temperature=0.7)
    a = execute(req)
    bad = Artifact.build(req, SEED, np.append(a.output_ids[:-1], V + 5), a.topk_ids, a.topk_logprobs)
    v = validate(bad, prefill(a.output_ids), request_hash=req.request_hash, seed=SEED,
                 completion_tokens=a.n, eos_id=EOS, vocab_size=V)
    assert kinds(v) == [(None, "format")] and v.faults[0].detail == f"token id {V + 5} outside the vocabulary of {V}"


def test_prefill_wrong_length__raises():
    req = request(temperature=0.7)
    a = execute(req)
    with pytest.raises(ValueError, match=f"prefill covers {a.n - 1} positions, the artifact has {a.n}"):
        validate(a, prefill(a.output_ids[:-1]), request_hash=req.request_hash, seed=SEED,
                 completion_tokens=a.n, eos_id=EOS, vocab_size=V)


def _check(pf: PrefillScores, x: int, params: SamplingParams, vocab_size: int):
    """check_sampling's (fault or None, outcome) for a one-position prefill, with the unseen
    tokens' noise checked, as the benchmark does."""
    faults, outcomes = check_sampling(pf, np.array([x]), params, SEED, EOS, vocab_size, DEFAULT.tie_eps,
                                      resolve_outsiders=True)
    return (faults[0] if faults else None), outcomes[0]


def _two_token_prefill(lp_a, lp_b, a=10, b=11) -> PrefillScores:
    """One position where only tokens a and b matter; the rest of the top-K is far below."""
    ids = np.array([[a, b] + list(range(20, 38))])
    lps = np.array([[lp_a, lp_b] + [-30.0] * 18])
    return PrefillScores(ids, lps, np.array([lp_a]), np.array([1]))


@pytest.mark.parametrize("gap,expect", [(0.25, "tie"), (-0.25, "resolved"), (2.5, "fault")])
def test_near_tie__within_eps_accepted_beyond_eps_accused(gap, expect):
    """The executor chose a; b's perturbed score beats a's by `gap` tie_eps (logit units, T = 1)."""
    gap *= DEFAULT.tie_eps
    ga, gb = noise.gumbel_scalar(SEED, 0, 10), noise.gumbel_scalar(SEED, 0, 11)
    lp_b = -0.7
    lp_a = lp_b + gb - ga - gap
    fault, outcome = _check(_two_token_prefill(lp_a, lp_b), 10, SamplingParams(1.0), 38)
    assert outcome == expect
    assert (fault is None) == (expect != "fault")
    if fault:
        assert fault.kind == "sampling" and fault.position == 0


def test_outsider_could_win__position_unresolved_not_accused():
    """With a large vocabulary outside the known top-K, an unseen token may beat the in-K winner:
    the validator can neither confirm nor accuse."""
    ids = np.arange(20)
    lps = np.linspace(-3.0, -4.0, 20)  # the top-K holds little mass: most of it is outside
    pf = PrefillScores(ids[None], lps[None], np.array([0.0]), np.array([1]))
    winner = int(np.argmax(lps + [noise.gumbel_scalar(SEED, 0, int(i)) for i in ids]))
    pf = replace(pf, token_logprobs=np.array([lps[winner]]))
    assert _check(pf, winner, SamplingParams(1.0), 50_000) == (None, "unresolved")
    # the same position with a vocabulary of exactly the known tokens is resolved
    assert _check(pf, winner, SamplingParams(1.0), 20) == (None, "resolved")
    # and greedy decoding never depends on the unseen tokens
    assert _check(pf, 0, SamplingParams(0.0), 50_000) == (None, "resolved")


def test_resolve_outsiders__only_the_metric_changes():
    """An unseen token could win only with far more noise than any of them actually has: without
    hashing the vocabulary the position stays unresolved, with it it is resolved; neither accuses."""
    ids = np.arange(20)
    lps = np.array([-0.01] + [-12.0] * 19)
    pf = PrefillScores(ids[None], lps[None], np.array([-0.01]), np.array([1]))
    g0 = noise.gumbel_scalar(SEED, 0, 0)
    assert -12.0 + noise.GUMBEL_MAX > -0.01 + g0 > -12.0 + noise.gumbel_max_outside(SEED, 0, 4096, ids)
    assert _check(pf, 0, SamplingParams(1.0), 4096) == (None, "resolved")
    faults, outcomes = check_sampling(pf, np.array([0]), SamplingParams(1.0), SEED, EOS, 4096, DEFAULT.tie_eps)
    assert (faults, outcomes) == ([], ["unresolved"])


@pytest.mark.parametrize("top_p, expect, outsider", [
    (0.7, [_IN, _IN, _OUT, _OUT], _OUT),  # mass before: 0, 0.5, 0.8, 0.95
    (0.85, [_IN, _IN, _IN, _OUT], _OUT),
    (0.8, [_IN, _IN, _MAYBE, _OUT], _OUT),  # 0.8 itself: inside the uncertainty
])
def test_mask_status__top_p_from_the_mass_before_each_candidate(top_p, expect, outsider):
    lps = np.log([0.5, 0.3, 0.15, 0.04])  # the remaining 0.01 lies outside the known set
    params = SamplingParams(1.0, top_p=top_p)
    status, out = _mask_status(lps, lps[-1], True, 0.01 * 1.001 / 0.5, params, 1e-4)
    assert status.tolist() == expect and out == outsider


def test_mask_status__top_k_alone_leaves_an_outsider_undecided_unless_k_known_are_above():
    lps = np.log([0.5, 0.3, 0.15, 0.04])
    assert _mask_status(lps, lps[-1], True, 0.0, SamplingParams(1.0, top_k=3), 1e-4)[1] == _OUT
    status, out = _mask_status(lps, lps[-1], True, 0.0, SamplingParams(1.0, top_k=5), 1e-4)
    assert status.tolist() == [_IN, _IN, _IN, _MAYBE] and out == _MAYBE


def test_prefill_from_vllm_prompt_logprobs__parses_topk_and_actual_token():
    entries = [None, {"5": {"logprob": -0.1, "rank": 1}}]  # a prompt position, ignored
    entries.append({"7": {"logprob": -0.5, "rank": 1, "decoded_token": "a"}, "3": {"logprob": -1.0, "rank": 2}})
    entries.append({"3": {"logprob": -0.2, "rank": 1}, "9": {"logprob": -2.0, "rank": 2}, "4": {"logprob": -6.0, "rank": 17}})
    pf = PrefillScores.from_prompt_logprobs(entries, [7, 4], top_k=2)
    assert pf.topk_ids.tolist() == [[7, 3], [3, 9]]
    assert pf.topk_logprobs.tolist() == [[-0.5, -1.0], [-0.2, -2.0]]
    assert pf.token_logprobs.tolist() == [-0.5, -6.0] and pf.token_ranks.tolist() == [1, 17]
    # the same entries with the actual token first (vLLM's order) or shuffled: the same scores
    for last in ({"4": {"logprob": -6.0, "rank": 17}, "3": {"logprob": -0.2, "rank": 1}, "9": {"logprob": -2.0, "rank": 2}},
                 {"9": {"logprob": -2.0, "rank": 2}, "4": {"logprob": -6.0, "rank": 17}, "3": {"logprob": -0.2, "rank": 1}}):
        again = PrefillScores.from_prompt_logprobs(entries[:3] + [last], [7, 4], top_k=2)
        assert again.topk_ids.tolist() == [[7, 3], [3, 9]] and again.token_ranks.tolist() == [1, 17]
        assert again.topk_logprobs.tolist() == [[-0.5, -1.0], [-0.2, -2.0]]
    with pytest.raises(ValueError, match="prompt_logprobs entry lacks the actual token 8"):
        PrefillScores.from_prompt_logprobs(entries, [7, 8], top_k=2)
    with pytest.raises(ValueError, match="prompt_logprobs entry has 2 top entries, expected 3"):
        PrefillScores.from_prompt_logprobs(entries, [7, 4], top_k=3)
    with pytest.raises(ValueError, match="prompt_logprobs has 4 entries, need more than 4"):
        PrefillScores.from_prompt_logprobs(entries, [1, 2, 7, 4], top_k=2)


def _reference_diffs(artifact: Artifact, pf: PrefillScores) -> tuple[np.ndarray, float]:
    """The per-position loop that `distribution_diffs` vectorizes, kept as its specification."""
    n, k = artifact.topk_ids.shape
    diffs, overlap = np.zeros((n, k + 1)), 0.0
    for t in range(n):
        v_ids, v_lps = pf.topk_ids[t], np.maximum(pf.topk_logprobs[t], LP_FLOOR)
        floor_out = max(float(v_lps[-1]), LP_FLOOR)
        lookup = dict(zip(v_ids.tolist(), v_lps.tolist()))
        lookup.setdefault(int(artifact.output_ids[t]), max(float(pf.token_logprobs[t]), LP_FLOOR))
        e_ids, e_lps = artifact.topk_ids[t], artifact.topk_logprobs[t]
        for j, (i, q) in enumerate(zip(e_ids.tolist(), e_lps.tolist())):
            diffs[t, j] = abs(q - lookup[i]) if i in lookup else max(0.0, q - floor_out)
        missing = ~np.isin(v_ids, e_ids)
        if missing.any():
            diffs[t, k] = max(0.0, float(v_lps[missing].max()) - float(e_lps.min()))
        overlap += np.isin(e_ids, v_ids).mean()
    return diffs, overlap / max(1, n)


def _with_outsider_in_topk(req, honest: Artifact) -> Artifact:
    """The token at position 2 is the least likely one, and the executor lists it in its top-k."""
    x = int(np.argsort(log_probs(int(honest.output_ids[1]), 2))[0])
    a = execute(req, force={2: x})
    ids, lps = a.topk_ids.copy(), a.topk_logprobs.copy()
    ids[2, 4], lps[2, 4] = x, -30.0
    return Artifact.build(req, SEED, a.output_ids, ids, lps)


def _shuffled_topk(lps):
    lps[3:6, 4] = -40.0  # below the floor
    lps[6, :] = lps[6, ::-1].copy()  # unsorted


@pytest.mark.parametrize("case", ["honest", "outsider_token", "tampered", "far_prefill"])
def test_distribution_diffs__vectorized_equals_the_per_position_loop(case):
    req = request(max_tokens=40)
    honest = execute(req)
    artifact = {
        "honest": honest,
        "outsider_token": _with_outsider_in_topk(req, honest),
        "tampered": execute(req, tamper=_shuffled_topk),
        "far_prefill": honest,
    }[case]
    pf = prefill(artifact.output_ids, jitter=0.5 if case == "far_prefill" else 1e-6)
    diffs, overlap = distribution_diffs(artifact, pf)
    expected, expected_overlap = _reference_diffs(artifact, pf)
    assert np.array_equal(diffs, expected) and overlap == expected_overlap
    assert case == "honest" or diffs.max() > 0.01  # the non-honest cases do exercise the big branches


def test_sampling_noise__each_positions_candidates_and_token__as_gumbel_scalar():
    ids = np.array([[0, 1, 7], [255, 4095, 2**31 - 1]])
    pf = PrefillScores(ids, np.zeros((2, 3)), np.zeros(2), np.ones(2, np.int64))
    for seed in (SEED, 1, 2**64 - 1):
        top, token = sampling_noise(seed, pf, np.array([9, 4095]))
        assert top.shape == (2, 3) and token.shape == (2,)
        for t in range(2):
            assert top[t].tolist() == pytest.approx([noise.gumbel_scalar(seed, t, int(i)) for i in ids[t]], abs=1e-12)
        assert token.tolist() == pytest.approx([noise.gumbel_scalar(seed, 0, 9), noise.gumbel_scalar(seed, 1, 4095)], abs=1e-12)


def _pairwise_mask_status(lps, lp_k, has_out, tail, params, half):
    """The mask statuses by comparing every pair of candidates: the definition that
    `_mask_status` computes by bisection over the sorted row."""
    m = len(lps)
    status, outsider = np.full(m, _IN), _MAYBE
    others = ~np.eye(m, dtype=bool)
    if params.top_k:
        surely = ((lps[None, :] - lps[:, None] > 2 * half) & others).sum(axis=1)
        could = ((lps[None, :] - lps[:, None] >= -2 * half) & others).sum(axis=1)
        could = could + np.where(has_out & (lp_k >= lps - 2 * half), params.top_k, 0)
        status = np.where(surely >= params.top_k, _OUT, np.where(could < params.top_k, _IN, _MAYBE))
        if (lps - lp_k > 2 * half).sum() >= params.top_k:
            outsider = _OUT
    if params.top_p < 1.0:
        temp, top = params.temperature, lps.max()
        w_lo, w_hi = np.exp((lps - half - top) / temp), np.exp((lps + half - top) / temp)
        lp_c, c = np.append(lps, lp_k), np.append(np.arange(m), -1)
        not_c = np.arange(m)[None, :] != c[:, None]
        could = not_c & (lps[None, :] >= lp_c[:, None] - 2 * half)
        surely = not_c & (lps[None, :] > lp_c[:, None] + 2 * half)
        kept, maybe = status == _IN, status != _OUT
        out_above = has_out & (lp_k >= lp_c - 2 * half)
        a_hi = np.where(could & maybe, w_hi, 0.0).sum(axis=1) + np.where(out_above, tail, 0.0)
        b_lo = np.where(kept & ~could, w_lo, 0.0).sum(axis=1)
        a_lo = np.where(surely & kept, w_lo, 0.0).sum(axis=1)
        b_hi = np.where(~surely & maybe, w_hi, 0.0).sum(axis=1) + (tail if has_out else 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            hi = np.where(a_hi + b_lo > 0, a_hi / (a_hi + b_lo), 1.0)
            lo = np.where(a_lo + b_hi > 0, a_lo / (a_lo + b_hi), 0.0)
        top_p = np.where(lo >= params.top_p, _OUT, np.where(hi < params.top_p, _IN, _MAYBE))
        status, outsider = np.minimum(status, top_p[:m]), min(outsider, int(top_p[m]))
    return status, outsider


@pytest.mark.parametrize("seed", range(40))
def test_mask_status__bisection_equals_pairwise_definition(seed):
    """Random rows with exact ties and near-ties at the 2*half boundary, every mask setting."""
    rng = np.random.default_rng(seed)
    half = DEFAULT.tie_eps / 2
    m = int(rng.integers(2, 40))
    lps = np.sort(rng.normal(-4.0, 2.0, m))[::-1]
    lps[rng.integers(0, m, 3)] = lps[0]  # ties
    lps[rng.integers(0, m)] = lps[1] - 2 * half * rng.choice([0.5, 1.0, 1.5])  # near-ties
    lps = lps - np.log(np.exp(lps).sum() * rng.uniform(1.0, 1.5))  # some mass left outside
    if rng.random() < 0.5:
        lps = np.append(lps, lps[-1] - rng.uniform(0, 3))  # the executor's token, outside the top-K
    lp_k, has_out = float(lps[:m].min()), bool(rng.random() < 0.8)
    for top_k, top_p in [(3, 1.0), (0, 0.9), (int(rng.integers(1, m + 2)), float(rng.uniform(0.3, 1.0)))]:
        params = SamplingParams(float(rng.choice([0.5, 0.7, 1.0, 1.3])), top_p, top_k)
        tail = float(rng.uniform(0, 0.2)) if has_out else 0.0
        status, outsider = _mask_status(lps, lp_k, has_out, tail, params, half)
        expected, expected_outsider = _pairwise_mask_status(lps, lp_k, has_out, tail, params, half)
        assert status.tolist() == expected.tolist() and outsider == expected_outsider
