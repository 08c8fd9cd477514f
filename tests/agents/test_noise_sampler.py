"""Seeded noise and sampler: fixed test vectors, numpy = torch, masks and determinism."""

import numpy as np
import pytest
import torch

from agents.verification import noise
from agents.verification.sampler import SamplingParams, mask_numpy, mask_torch, sample_numpy, sample_torch

# (seed, position, token id) -> (32-bit hash, Gumbel value), frozen from the reference implementation:
# any change to the noise function changes every executor's tokens, so it must fail here first.
# The hash bits agree exactly everywhere; the float64 Gumbel values differ by a few ulps between
# numpy's and torch's log (measured: at most 1.8e-15), which moves a token only on an exact tie.
GUMBEL_ULPS = 1e-14
VECTORS = [
    ((0, 0, 0), 0, -2.8523629042865366),
    ((1, 0, 1), 2801375594, 0.8501908841332121),
    ((0xDEADBEEFCAFEBABE, 7, 4095), 787468349, -0.5284941854013465),
    ((2**64 - 1, 255, 151935), 658370077, -0.6288389631982689),
    ((12345, 3, 17), 3241631910, 1.2680951497964075),
]


@pytest.mark.parametrize("triple,bits,gumbel", VECTORS)
def test_noise__test_vectors__match_numpy_torch_and_scalar(triple, bits, gumbel):
    seed, position, token = triple
    assert int(noise.hash_bits(seed, position, token)) == bits
    assert noise.gumbel_scalar(seed, position, token) == pytest.approx(gumbel, abs=GUMBEL_ULPS)
    vocab = token + 1
    assert int(noise.hash_bits(seed, position, np.arange(vocab))[token]) == bits
    assert int(noise.hash_bits(seed, position, torch.arange(vocab))[token]) == bits
    assert noise.gumbel_numpy(seed, position, vocab)[token] == pytest.approx(gumbel, abs=GUMBEL_ULPS)
    assert noise.gumbel_torch(seed, position, vocab)[token].item() == pytest.approx(gumbel, abs=GUMBEL_ULPS)


def test_noise__whole_vocab__numpy_equals_torch():
    ids = np.arange(50_000)
    for seed, position in [(7, 0), (2**63 + 5, 1000), (99, 2**32 + 3)]:
        assert np.array_equal(noise.hash_bits(seed, position, ids), noise.hash_bits(seed, position, torch.arange(50_000)).numpy())
        a = noise.gumbel_numpy(seed, position, 50_000)
        b = noise.gumbel_torch(seed, position, 50_000).numpy()
        assert np.abs(a - b).max() < GUMBEL_ULPS
        assert np.argmax(a) == np.argmax(b)


def test_gumbel_max_outside__the_masked_vocabulary_maximum():
    g = noise.gumbel_numpy(7, 3, 4096)
    best = np.argsort(-g)
    assert noise.gumbel_max_outside(7, 3, 4096, []) == pytest.approx(g.max(), abs=GUMBEL_ULPS)
    assert noise.gumbel_max_outside(7, 3, 4096, best[:10]) == pytest.approx(g[best[10]], abs=GUMBEL_ULPS)
    assert noise.gumbel_max_outside(7, 3, 4, [0, 1, 2, 3]) == -np.inf
    # no token's noise reaches the bound the validator tries first
    assert g.max() < noise.GUMBEL_MAX == pytest.approx(17.3287, abs=1e-4)


def test_noise__seed_out_of_range__raises():
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\), got -1"):
        noise.gumbel_scalar(-1, 0, 0)
    with pytest.raises(ValueError, match="inference id must be 32 bytes, got 31"):
        noise.seed_from_inference_id(b"\x01" * 31)
    assert noise.seed_from_inference_id(bytes(range(32))) == 0x0001020304050607


def test_noise__gumbel_moments__look_gumbel():
    g = noise.gumbel_numpy(2024, 5, 200_000)
    assert abs(g.mean() - 0.5772) < 0.01  # Euler-Mascheroni
    assert abs(g.var() - np.pi**2 / 6) < 0.03
    assert not np.array_equal(g, noise.gumbel_numpy(2024, 6, 200_000))
    assert not np.array_equal(g, noise.gumbel_numpy(2025, 5, 200_000))


def test_sampler__numpy_and_torch__pick_the_same_tokens():
    rng = np.random.default_rng(1)
    params = [SamplingParams(1.0), SamplingParams(0.7, top_p=0.9), SamplingParams(1.3, top_k=40), SamplingParams(0.0)]
    for t in range(50):
        logits = rng.normal(0, 3, 4096).astype(np.float32)
        for p in params:
            assert sample_numpy(logits, p, 42, t) == sample_torch(torch.from_numpy(logits), p, 42, t)


def test_sampler__same_inputs__same_token_and_other_seed_differs():
    logits = np.zeros(1000)  # uniform: the token is decided by the noise alone
    p = SamplingParams(1.0)
    tokens = [sample_numpy(logits, p, 5, t) for t in range(20)]
    assert tokens == [sample_numpy(logits, p, 5, t) for t in range(20)]
    assert tokens != [sample_numpy(logits, p, 6, t) for t in range(20)]
    assert tokens[0] == int(np.argmax(noise.gumbel_numpy(5, 0, 1000)))


def test_sampler__greedy__ignores_noise():
    logits = np.array([0.1, 2.0, 1.9, -1.0])
    assert {sample_numpy(logits, SamplingParams(0.0), s, 0) for s in range(20)} == {1}


def test_mask__top_k__keeps_k_best():
    logits = np.array([3.0, 1.0, 2.0, 0.0, -1.0])
    z = mask_numpy(logits, SamplingParams(1.0, top_k=2))
    assert np.isfinite(z).tolist() == [True, False, True, False, False]
    assert np.array_equal(np.isfinite(mask_torch(torch.tensor(logits), SamplingParams(1.0, top_k=2)).numpy()), np.isfinite(z))


def test_mask__top_p__keeps_smallest_prefix_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    assert np.isfinite(mask_numpy(logits, SamplingParams(1.0, top_p=0.8))).tolist() == [True, True, False, False]
    assert np.isfinite(mask_numpy(logits, SamplingParams(1.0, top_p=0.81))).tolist() == [True, True, True, False]
    for top_p in (0.8, 0.81, 0.5, 0.99):
        a = np.isfinite(mask_numpy(logits, SamplingParams(1.0, top_p=top_p)))
        b = np.isfinite(mask_torch(torch.tensor(logits), SamplingParams(1.0, top_p=top_p)).numpy())
        assert np.array_equal(a, b)


def test_mask__temperature__divides_logits():
    z = mask_numpy(np.array([1.0, -2.0]), SamplingParams(0.5))
    assert z.tolist() == [2.0, -4.0]
