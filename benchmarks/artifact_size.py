"""Artifact size benchmark: bytes per output token of real answers at k = 5.

    python -m benchmarks.artifact_size                     # about 30 seconds
    python -m benchmarks.artifact_size --lengths 16 64 256 --prompts 8

Generates answers with the reference model (agents.mlnode.engine.Engine, batched, seeded sampling
at temperature 1.0 and greedy), builds each artifact as the executor does
(agents.verification.artifact, top-k = ARTIFACT_TOP_K) and reports the encoded bytes per output
token, excluding the request bytes (the format's figure; target at most 16) and including them.
An answer that ends with EOS before max_tokens counts with its real length. Writes
benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from agents.devnet.network import MODEL_NAME, REFERENCE_MODEL
from agents.mlnode.engine import Engine
from agents.protocol.eip712 import Domain, inference_id
from agents.protocol.requests import InferenceRequest
from agents.verification.artifact import Artifact, bytes_per_token
from agents.verification.calibration import ARTIFACT_TOP_K
from agents.verification.noise import seed_from_inference_id
from agents.verification.sampler import SamplingParams
from benchmarks.common import PROMPTS, machine, pyplot, show, write_json

# any domain: the seed only has to come from an inference id, as on the network
DOMAIN = Domain(31337, "0x" + "11" * 20)
CLIENT = "0x" + "22" * 20


def measure(engine: Engine, prompts: list[str], max_tokens: int, temperature: float) -> list[dict]:
    """One batch of answers (the engine's batched decode: same tokens as one by one, faster)."""
    requests = [InferenceRequest(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens,
                                 temperature=temperature, max_price=1, nonce=nonce,
                                 deadline=2**40, client=CLIENT)
                for nonce, prompt in enumerate(prompts)]
    seeds = [seed_from_inference_id(inference_id(r, DOMAIN)) for r in requests]
    ids = [engine.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    gens = engine.generate_batch(ids, SamplingParams(temperature=temperature), seeds, max_tokens,
                                 logprobs=ARTIFACT_TOP_K)
    out = []
    for request, seed, gen in zip(requests, seeds, gens):
        artifact = Artifact.build(request, seed, gen.output_ids, gen.topk_ids, gen.topk_logprobs)
        size = len(artifact.encode())
        out.append({"max_tokens": max_tokens, "temperature": temperature, "prompt": request.prompt,
                    "output_tokens": artifact.n, "artifact_bytes": size,
                    "request_bytes": len(artifact.request_json),
                    "bytes_per_token": bytes_per_token(artifact),
                    "bytes_per_token_with_request": size / max(1, artifact.n)})
    return out


def summarize(samples: list[dict], lengths: list[int]) -> list[dict]:
    rows = []
    for length in lengths:
        group = [s for s in samples if s["max_tokens"] == length]
        rows.append({"max_tokens": length, "answers": len(group),
                     "output_tokens_mean": statistics.mean(s["output_tokens"] for s in group),
                     "bytes_per_token": statistics.mean(s["bytes_per_token"] for s in group),
                     "bytes_per_token_max": max(s["bytes_per_token"] for s in group),
                     "bytes_per_token_with_request":
                         statistics.mean(s["bytes_per_token_with_request"] for s in group),
                     "request_bytes_mean": statistics.mean(s["request_bytes"] for s in group)})
    return rows


def plot(samples: list[dict], rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    n = [s["output_tokens"] for s in samples]
    ax.scatter(n, [s["bytes_per_token"] for s in samples], s=12, label="excluding the request")
    ax.scatter(n, [s["bytes_per_token_with_request"] for s in samples], s=12, marker="x",
               label="including the request")
    ax.axhline(16, color="grey", linestyle=":", label="target: 16 bytes per token")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("output tokens")
    ax.set_ylabel("artifact bytes per output token")
    ax.set_title(f"artifact size at k = {ARTIFACT_TOP_K}, reference model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help="prompts per length")
    p.add_argument("--model", type=Path, default=REFERENCE_MODEL)
    p.add_argument("--name", default="artifact_size", help="results file stem")
    args = p.parse_args(argv)

    engine = Engine.load(args.model)
    samples = []
    for length in args.lengths:
        for temperature in (1.0, 0.0):
            samples += measure(engine, PROMPTS[:args.prompts], length, temperature)
        print(f"{length} tokens: {len(samples)} answers so far")
    rows = summarize(samples, args.lengths)
    report = {"benchmark": "artifact_size", "machine": machine(),
              "config": {"model": str(args.model), "spec_hash": engine.spec_hash,
                         "vocab_size": engine.vocab_size, "k": ARTIFACT_TOP_K,
                         "lengths": args.lengths, "temperatures": [1.0, 0.0],
                         "prompts": PROMPTS[:args.prompts]},
              "summary": {"bytes_per_token_max": max(s["bytes_per_token"] for s in samples),
                          "bytes_per_token_mean":
                              statistics.mean(s["bytes_per_token"] for s in samples),
                          "target": 16},
              "by_length": rows, "samples": samples}
    path = write_json(args.name, report)
    plot(samples, rows, path.with_suffix(".png"))
    show(f"artifact bytes per output token, k = {ARTIFACT_TOP_K} (means over "
         f"{len(samples) // len(args.lengths)} answers per length)",
         ["max tokens", "output tokens", "bytes/token", "max bytes/token",
          "bytes/token with request", "request bytes"],
         [[r["max_tokens"], r["output_tokens_mean"], r["bytes_per_token"],
           r["bytes_per_token_max"], r["bytes_per_token_with_request"], r["request_bytes_mean"]]
          for r in rows])
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
