"""The CPU engine against the real reference model in models/ref-tiny."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from agents.mlnode.engine import Engine
from agents.verification.sampler import SamplingParams, sample_numpy

REF = Path(__file__).resolve().parents[2] / "models" / "ref-tiny"
GREEDY = SamplingParams(temperature=0.0)
WARM = SamplingParams(temperature=0.8, top_k=50, top_p=0.95)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(REF, threads=2)


@pytest.fixture(scope="module")
def prompt(engine) -> list[int]:
    return engine.tokenizer("def main():\n    parser = ").input_ids


def by_id(ids: np.ndarray, lps: np.ndarray) -> np.ndarray:
    """Rows of a full-vocabulary top-k reordered by token id, to compare distributions."""
    return np.take_along_axis(lps, np.argsort(ids, axis=1), axis=1)


def test_load__manifest_pins_name_and_spec_hash(engine):
    manifest = (REF / "manifest.json").read_bytes()
    assert engine.name == "nullius/ref-tiny" == json.loads(manifest)["name"]
    assert engine.spec_hash == "0x" + hashlib.sha256(manifest).hexdigest()
    assert engine.eos_id == engine.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert (engine.vocab_size, engine.max_model_len) == (4096, 512)


def test_manifest__weights_hash_matches_file():
    manifest = json.loads((REF / "manifest.json").read_text())
    weights = hashlib.sha256((REF / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["weights_sha256"] == weights
    assert (manifest["dtype"], manifest["quantization"]) == ("float16", "none")
    assert manifest["final_loss"] < 5.0 < np.log(4096) - 3  # far better than chance (8.32)


def test_kv_cache_decode__matches_one_full_forward(engine, prompt):
    vocab = engine.vocab_size
    gen = engine.generate(prompt, GREEDY, None, 24, logprobs=vocab)
    full = engine.prefill(prompt + gen.output_ids, vocab)
    n = len(prompt)
    cached = by_id(gen.topk_ids, gen.topk_logprobs)[: len(gen.output_ids)]
    uncached = by_id(full.topk_ids, full.topk_logprobs)[n - 1 :]
    assert cached.shape == (24, vocab)
    assert np.abs(cached - uncached).max() < 1e-4
    np.testing.assert_allclose(gen.token_logprobs, full.token_logprobs[n - 1 :], atol=1e-4)


def test_greedy__picks_the_argmax_and_ranks_one(engine, prompt):
    gen = engine.generate(prompt, GREEDY, None, 12, logprobs=3)
    assert gen.output_ids == [int(i) for i in gen.topk_ids[:, 0]]
    np.testing.assert_array_equal(gen.token_logprobs, gen.topk_logprobs[:, 0])
    assert gen.finish_reason == "length" and len(gen.output_ids) == 12


def test_seeded_sampling__reproducible_and_seed_dependent(engine, prompt):
    a = engine.generate(prompt, WARM, 42, 24)
    b = engine.generate(prompt, WARM, 42, 24)
    c = engine.generate(prompt, WARM, 43, 24)
    assert a.output_ids == b.output_ids
    assert a.output_ids != c.output_ids
    assert engine.generate(prompt, WARM, None, 24).output_ids == \
        engine.generate(prompt, WARM, 0, 24).output_ids


def test_seeded_sampling__is_the_perturbed_argmax_of_the_raw_logprobs(engine, prompt):
    """What a validator recomputes: each token from its position's full logprobs and the seed."""
    seed = 2**63 + 7
    gen = engine.generate(prompt, WARM, seed, 16, logprobs=engine.vocab_size)
    rows = by_id(gen.topk_ids, gen.topk_logprobs)
    redone = [sample_numpy(rows[t], WARM, seed, t) for t in range(len(gen.output_ids))]
    assert redone == gen.output_ids


def test_logprobs__raw_whatever_the_temperature(engine, prompt):
    cold = engine.generate(prompt, GREEDY, None, 1, logprobs=5)
    hot = engine.generate(prompt, SamplingParams(temperature=1.7, top_k=3), 5, 1, logprobs=5)
    np.testing.assert_array_equal(cold.topk_ids, hot.topk_ids)
    np.testing.assert_allclose(cold.topk_logprobs, hot.topk_logprobs, atol=1e-6)


def test_stream__yields_what_generate_returns(engine, prompt):
    tokens = list(engine.stream(prompt, WARM, 9, 10, logprobs=2))
    gen = engine.generate(prompt, WARM, 9, 10, logprobs=2)
    assert [t.id for t in tokens] == gen.output_ids
    reasons = [t.finish_reason for t in tokens]
    assert reasons == [None] * (len(tokens) - 1) + [gen.finish_reason]


def test_generate__stops_at_eos_and_keeps_it(engine):
    prompt = engine.tokenizer("        return self._value\n").input_ids
    gen = engine.generate(prompt, GREEDY, None, 64, logprobs=1)
    assert gen.finish_reason == "stop"
    assert gen.output_ids[-1] == engine.eos_id and len(gen.output_ids) < 64
    assert gen.token_logprobs.shape == (len(gen.output_ids),)


def test_generate__beyond_context__raises(engine, prompt):
    with pytest.raises(ValueError, match=r"^prompt \(6 tokens\) \+ max_tokens \(507\) exceeds "
                                         r"the context length of 512 tokens$"):
        engine.generate(prompt[:6], GREEDY, None, 507)
    assert len(engine.generate(prompt[:6], GREEDY, None, 1).output_ids) == 1


def test_generate_batch__with_padding_matches_single(engine, prompt):
    prompts = [prompt, prompt[:3], engine.tokenizer("class Stack:\n    def push(self").input_ids]
    seeds = [1, 2, None]
    batch = engine.generate_batch(prompts, WARM, seeds, 12, logprobs=5)
    for p, seed, b in zip(prompts, seeds, batch):
        single = engine.generate(p, WARM, seed, 12, logprobs=5)
        assert b.output_ids == single.output_ids
        assert np.abs(b.topk_logprobs - single.topk_logprobs).max() < 1e-4
        assert b.finish_reason == single.finish_reason


def test_generate_batch__seed_count_mismatch__raises(engine, prompt):
    with pytest.raises(ValueError, match=r"^2 prompts but 1 seeds$"):
        engine.generate_batch([prompt, prompt], GREEDY, [1], 4)


def test_prefill__scores_every_position_after_the_first(engine, prompt):
    pre = engine.prefill(prompt, 4)
    n = len(prompt)
    assert pre.topk_ids.shape == (n - 1, 4) and pre.token_logprobs.shape == (n - 1,)
    for r in range(n - 1):
        actual = prompt[r + 1]
        higher = int((pre.topk_logprobs[r] > pre.token_logprobs[r]).sum())
        assert pre.token_ranks[r] == higher + 1 if higher < 4 else pre.token_ranks[r] > 4
        if actual in pre.topk_ids[r]:
            k = list(pre.topk_ids[r]).index(actual)
            assert pre.topk_logprobs[r, k] == pre.token_logprobs[r]


def test_prefill__beyond_context__raises(engine):
    with pytest.raises(ValueError, match=r"^513 tokens exceed the context length of 512 tokens$"):
        engine.prefill([5] * 513, 1)


def test_score_and_stream__the_scores_of_prefill_and_the_tokens_of_generate(engine, prompt):
    """One forward pass serves both, as vLLM does with prompt_logprobs."""
    params = SamplingParams(0.7)
    scores, tokens = engine.score_and_stream(prompt, 8, params, 11, 6, logprobs=3)
    alone = engine.prefill(prompt, 8)
    assert np.array_equal(scores.topk_ids, alone.topk_ids)
    assert np.allclose(scores.topk_logprobs, alone.topk_logprobs, atol=1e-5)
    assert np.array_equal(scores.token_ranks, alone.token_ranks)
    assert [t.id for t in tokens] == engine.generate(prompt, params, 11, 6, 3).output_ids


def test_score_and_stream__beyond_context__raises_before_any_work(engine, prompt):
    with pytest.raises(ValueError, match=r"exceeds the context length of 512 tokens$"):
        engine.score_and_stream(prompt, 4, SamplingParams(0.0), 0, 512)
