"""Validation thresholds, in nats (natural-log probability units), derived from measurements.

`benchmarks/detection.py` runs honest executors under engine variations (1 or 2 threads, batch 1
or 8 with left padding, a separately loaded validator engine, greedy and sampled, 16 to 256
tokens) and measures the honest drift: the largest |executor logprob - validator logprob| over the
executor's unrounded top-k entries. `calibrate` turns it into thresholds (derivation in
docs/verification.md, section 4). MEASURED_DRIFT is the full run's figure for the CPU engine
(float32 compute of float16-stored weights); another engine (vLLM, GPU kernels, bf16) must be
measured again, and its drift will be far larger.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.verification.artifact import LP_QUANT_ERROR

# How many logprobs the validator asks its prefill for per position, and how many the executor
# puts in the artifact. A wrong token is proven only against a known rival: with 20, 24 of 944
# effective T 0.7 -> 0.5 attacks had none at any position and passed unresolved; with 256, 2
# (benchmarks/results/detection_seed_temperature.json). vLLM caps prompt_logprobs at its
# `--max-logprobs`, 20 by default: a validator's vLLM must be started with 256.
VALIDATOR_TOP_K = 256
ARTIFACT_TOP_K = 5

# Thresholds sit this many times above the largest honest drift measured: a false accusation
# costs an honest executor its stake, so they are set to make one impossible, not unlikely.
SAFETY = 10
MEASURED_DRIFT = 3.24249267578125e-05  # benchmarks/results/detection.json, honest.drift_max


@dataclass(frozen=True)
class Thresholds:
    # An executor token that the validator's own perturbed scores rank below another candidate by
    # at most this margin (in logit units, T * score difference) is an honest near-tie.
    tie_eps: float
    # Largest allowed |executor logprob - validator logprob| for one top-k entry.
    lp_max: float
    # Largest allowed mean of those differences over the whole artifact.
    lp_mean: float


def calibrate(drift: float, safety: float = SAFETY) -> Thresholds:
    """A near-tie margin is the difference of two logprobs, each off by at most `drift`; an
    artifact entry is also rounded, by at most LP_QUANT_ERROR."""
    return Thresholds(
        tie_eps=safety * 2 * drift,
        lp_max=LP_QUANT_ERROR + safety * drift,
        lp_mean=LP_QUANT_ERROR + safety * drift,
    )


DEFAULT = calibrate(MEASURED_DRIFT)
