"""Detection benchmark: how often the one-pass validator catches each attack, how often it
accuses an honest executor, and what a validation costs.

    python -m benchmarks.detection --quick          # about 2 minutes
    nohup python -m benchmarks.detection --honest 2000 --cases 96 > detection.log &

Stages: (1) honest executors under engine variations (1 or 2 threads, batch 1 or 8 with left
padding, a separately loaded validator engine, greedy / T=0.7 / T=1.0, 16 to 256 tokens)
measure the honest logprob drift; (2) thresholds are derived from it (`calibrate`); (3) every
honest artifact and every attack of `benchmarks.attacks` is judged with those thresholds;
(4) int8/int4 separability against the number of output tokens (AUC), and the validation cost.
Writes benchmarks/results/detection[_quick].json and one PNG per attack.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sysconfig
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from agents.mlnode.engine import Engine
from agents.protocol.eip712 import Domain, inference_id
from agents.protocol.requests import InferenceRequest
from agents.verification.artifact import bytes_per_token
from agents.verification.calibration import SAFETY, VALIDATOR_TOP_K, Thresholds, calibrate
from agents.verification.noise import seed_from_inference_id
from agents.verification.validator import PrefillScores, Verdict, distribution_diffs, precheck, validate
from benchmarks import attacks
from benchmarks.attacks import SYSTEM_PREFIX, Case, Engines, Published

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOMAIN = Domain(chain_id=31337, ledger="0x" + "00" * 19 + "01")
CLIENT = "0x" + "c1" * 20
ATTACK_TOKENS = 64
ATTACK_TEMPERATURE = 0.7


# -- cases -----------------------------------------------------------------------------------


def _snippets(rng: random.Random, count: int) -> list[str]:
    """Code excerpts from the Python standard library: offline text like the models' training set."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < count:
        lines = rng.choice(files).read_text(errors="replace").splitlines()
        if len(lines) < 20:
            continue
        start = rng.randrange(len(lines) - 8)
        text = "\n".join(lines[start : start + rng.randint(2, 6)]).strip()[:200]
        if len(text) > 20:
            out.append(text)  # ending mid-line: after a final newline the model often stops at once
    return out


def make_cases(ref: Engine, rng: random.Random, count: int, max_tokens: int, temperature: float,
               top_p: float = 1.0) -> list[Case]:
    cases = []
    for text in _snippets(rng, count):
        request = InferenceRequest(
            model=ref.name, prompt=SYSTEM_PREFIX + text, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, max_price=1, nonce=rng.getrandbits(64), deadline=2_000_000_000, client=CLIENT,
        )
        cases.append(Case(
            request=request,
            prompt_ids=ref.tokenizer(request.prompt)["input_ids"],
            user_ids=ref.tokenizer(text)["input_ids"],
            seed=seed_from_inference_id(inference_id(request, DOMAIN)),
        ))
    return cases


# -- judging ---------------------------------------------------------------------------------


def scores_for(validator: Engine, case: Case, output_ids) -> tuple[PrefillScores, float]:
    """The validator's prefill over the signed prompt + the executor's tokens, and its time."""
    start = time.perf_counter()
    pf = validator.prefill(list(case.prompt_ids) + list(output_ids), VALIDATOR_TOP_K)
    elapsed = time.perf_counter() - start
    rows = slice(len(case.prompt_ids) - 1, len(case.prompt_ids) - 1 + len(output_ids))
    return PrefillScores(pf.topk_ids[rows], pf.topk_logprobs[rows], pf.token_logprobs[rows], pf.token_ranks[rows]), elapsed


def judge(validator: Engine, case: Case, pub: Published, thresholds: Thresholds, scores=None) -> Verdict:
    faults = precheck(pub.artifact, case.request.request_hash, validator.vocab_size)
    if faults:
        return Verdict(False, 0, faults)
    scores = scores or scores_for(validator, case, pub.artifact.output_ids)[0]
    return validate(
        pub.artifact, scores, request_hash=case.request.request_hash, seed=case.seed,
        completion_tokens=pub.artifact.n, eos_id=validator.eos_id, vocab_size=validator.vocab_size,
        thresholds=thresholds,
    )


def honest_drift(pub: Published, scores: PrefillScores) -> float:
    """Largest |executor - validator| over the executor's unrounded top-k entries."""
    worst = 0.0
    for t in range(pub.artifact.n):
        lookup = dict(zip(scores.topk_ids[t].tolist(), scores.topk_logprobs[t].tolist()))
        for i, lp in zip(pub.artifact.topk_ids[t].tolist(), pub.raw_logprobs[t].tolist()):
            if i in lookup:
                worst = max(worst, abs(lp - lookup[i]))
    return worst


# -- stages ------------------------------------------------------------------------------------

HONEST_VARIATIONS = [
    ("batch8_1thread", attacks.honest_batch, 1),
    ("batch8_2threads", attacks.honest_batch, 2),
    ("single_1thread", attacks.honest_single, 1),
    ("single_2threads", attacks.honest_single, 2),
]
HONEST_TEMPERATURES = [0.0, 0.7, 1.0]
HONEST_LENGTHS = [16, 32, 64, 128, 256]


def run_honest(engines: Engines, validator: Engine, rng: random.Random, total: int, log) -> list[dict]:
    """Executes `total` honest inferences in groups of 8 over the variation grid; keeps each
    artifact with its prefill so that stage 3 can judge it with the calibrated thresholds."""
    runs = []
    group = 0
    while len(runs) < total:
        name, executor, threads = HONEST_VARIATIONS[group % len(HONEST_VARIATIONS)]
        temperature = HONEST_TEMPERATURES[group % len(HONEST_TEMPERATURES)]
        length = HONEST_LENGTHS[(group // 2) % len(HONEST_LENGTHS)]
        size = 8 if name.startswith("batch") else 2
        cases = make_cases(engines.ref, rng, min(size, total - len(runs)), length, temperature)
        for case, pub in zip(cases, executor(engines, cases, threads)):
            torch.set_num_threads(3 - threads)  # the validator uses the other thread count
            scores, _ = scores_for(validator, case, pub.artifact.output_ids)
            runs.append(dict(variation=name, temperature=temperature, max_tokens=length, case=case, pub=pub,
                             scores=scores, drift=honest_drift(pub, scores)))
        group += 1
        log(f"honest {len(runs)}/{total}")
    return runs


def run_attacks(engines: Engines, validator: Engine, rng: random.Random, count: int, thresholds, log) -> dict:
    results = {}
    for name, attack in attacks.ATTACKS.items():
        torch.set_num_threads(1)
        cases = make_cases(engines.ref, rng, count, ATTACK_TOKENS, ATTACK_TEMPERATURE,
                           **attacks.SIGNED.get(name, {}))
        verdicts = []
        for i in range(0, count, 8):
            chunk = cases[i : i + 8]
            for case, pub in zip(chunk, attack(engines, chunk)):
                verdicts.append(judge(validator, case, pub, thresholds))
        kinds = Counter(f.kind for v in verdicts for f in v.faults)
        results[name] = dict(
            n=len(verdicts), detected=sum(not v.passed for v in verdicts),
            rate=sum(not v.passed for v in verdicts) / len(verdicts),
            mean_faulty_positions=float(np.mean([len({f.position for f in v.faults}) for v in verdicts])),
            mean_output_tokens=float(np.mean([v.metrics.n for v in verdicts])),
            fault_kinds=dict(kinds.most_common()),
            scores=[v.score for v in verdicts], lp_means=[v.metrics.lp_mean for v in verdicts],
        )
        log(f"attack {name}: detected {results[name]['detected']}/{count}")
    return results


def _auc(honest: np.ndarray, attack: np.ndarray) -> float:
    """P(attack statistic > honest statistic), ties counting half."""
    greater = (attack[:, None] > honest[None, :]).mean()
    ties = (attack[:, None] == honest[None, :]).mean()
    return float(greater + ties / 2)


def run_auc(engines: Engines, validator: Engine, rng: random.Random, count: int, log) -> dict:
    """Mean |executor - validator| top-k logprob difference over the first n output tokens, for
    honest and quantized executors at T = 0.7 and 256 tokens: the AUC per n."""
    torch.set_num_threads(1)
    lengths = [4, 8, 16, 32, 64, 128, 256]
    curves: dict[str, dict] = {}
    stats: dict[str, list[np.ndarray]] = {"honest": [], "int8": [], "int4": []}
    executors = {"honest": attacks.honest_batch, "int8": attacks.int8, "int4": attacks.int4}
    for label, executor in executors.items():
        for i in range(0, count, 8):
            cases = make_cases(engines.ref, rng, min(8, count - i), 256, ATTACK_TEMPERATURE)
            for case, pub in zip(cases, executor(engines, cases)):
                scores, _ = scores_for(validator, case, pub.artifact.output_ids)
                diffs, _ = distribution_diffs(pub.artifact, scores)
                stats[label].append(diffs[:, : pub.artifact.k].mean(axis=1))
        log(f"auc {label}: {len(stats[label])}")
    for label in ("int8", "int4"):
        curve = {}
        for n in lengths:
            h = np.array([s[:n].mean() for s in stats["honest"] if len(s) >= n])
            a = np.array([s[:n].mean() for s in stats[label] if len(s) >= n])
            if len(h) and len(a):
                curve[n] = dict(auc=_auc(h, a), honest_mean=float(h.mean()), attack_mean=float(a.mean()), pairs=[len(h), len(a)])
        needed = next((n for n, c in curve.items() if c["auc"] >= 0.999), None)
        curves[label] = dict(curve=curve, tokens_for_auc_0999=needed)
    return curves


def run_cost(engines: Engines, validator: Engine, rng: random.Random, repeats: int) -> dict:
    """Validator prefill time over executor generation time, one thread each, single requests."""
    torch.set_num_threads(1)
    out = {}
    for length in (64, 256):
        gen_s, pre_s = [], []
        for case in make_cases(engines.ref, rng, repeats, length, 0.0):
            start = time.perf_counter()
            g = engines.ref.generate(case.prompt_ids, case.request.sampling, case.seed, length, attacks.K)
            gen_s.append((time.perf_counter() - start) / len(g.output_ids) * length)
            _, elapsed = scores_for(validator, case, g.output_ids)
            pre_s.append(elapsed)
        out[length] = dict(generate_s=float(np.median(gen_s)), prefill_s=float(np.median(pre_s)),
                           ratio=float(np.median(pre_s) / np.median(gen_s)))
    return out


# -- output ------------------------------------------------------------------------------------


def plot(name: str, honest_scores, honest_means, attack: dict, thresholds: Thresholds, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    bins = np.linspace(0, 10_000, 21)
    left.hist(honest_scores, bins=bins, alpha=0.6, label="honest", density=True)
    left.hist(attack["scores"], bins=bins, alpha=0.6, label=name, density=True)
    left.set_xlabel("validator score (0..10000)")
    left.legend(fontsize=8)
    top = max(max(honest_means, default=0), max(attack["lp_means"], default=0), thresholds.lp_mean) * 1.1 + 1e-6
    bins = np.linspace(0, top, 30)
    right.hist(honest_means, bins=bins, alpha=0.6, label="honest", density=True)
    right.hist(attack["lp_means"], bins=bins, alpha=0.6, label=name, density=True)
    right.axvline(thresholds.lp_mean, color="k", linestyle="--", label="lp_mean threshold")
    right.set_xlabel("mean |executor - validator| top-k logprob (nats)")
    right.legend(fontsize=8)
    fig.suptitle(f"{name}: detected {attack['detected']}/{attack['n']} at {ATTACK_TOKENS} tokens, T={ATTACK_TEMPERATURE}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_auc(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, data in curves.items():
        ns = sorted(int(n) for n in data["curve"])
        ax.plot(ns, [data["curve"][n]["auc"] for n in ns], marker="o", label=label)
    ax.axhline(0.999, color="k", linestyle="--", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("output tokens")
    ax.set_ylabel("AUC, mean logprob difference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _manifest_sha(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about 2 minutes)")
    parser.add_argument("--honest", type=int, default=2000, help="honest validations")
    parser.add_argument("--cases", type=int, default=96, help="validations per attack")
    parser.add_argument("--auc", type=int, default=64, help="256-token artifacts per side for the AUC")
    parser.add_argument("--cost-repeats", type=int, default=5)
    parser.add_argument("--ref", type=Path, default=ROOT / "models/ref-tiny")
    parser.add_argument("--sub", type=Path, default=ROOT / "models/sub-nano")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    if args.quick:
        args.honest, args.cases, args.auc, args.cost_repeats = 16, 8, 4, 1
    suffix = "_quick" if args.quick else ""
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    rng = random.Random(args.seed)
    models = {p.name: _manifest_sha(p) for p in (args.ref, args.sub)}  # what is loaded, now
    ref = Engine.load(args.ref, threads=1)
    engines = Engines(ref=ref, sub=Engine.load(args.sub), int8=attacks.fake_quantize(ref, 8, None),
                      int4=attacks.fake_quantize(ref, 4, 64))
    validator = Engine.load(args.ref)  # a second load: the validator's own, restarted engine

    honest = run_honest(engines, validator, rng, args.honest, log)
    drift = max(r["drift"] for r in honest)
    thresholds = calibrate(drift)
    log(f"honest drift {drift:.3g} -> {thresholds}")
    verdicts = [judge(validator, r["case"], r["pub"], thresholds, r["scores"]) for r in honest]
    by_variation: dict[str, Counter] = {}
    for r, v in zip(honest, verdicts):
        for key in (r["variation"], f"T={r['temperature']}", f"max_tokens={r['max_tokens']}"):
            by_variation.setdefault(key, Counter())["n"] += 1
            by_variation[key]["false_positives"] += not v.passed
    positions = sum(v.metrics.n for v in verdicts)
    sampled = [v for r, v in zip(honest, verdicts) if r["temperature"] > 0]

    attack_results = run_attacks(engines, validator, rng, args.cases, thresholds, log)
    auc = run_auc(engines, validator, rng, args.auc, log)
    cost = run_cost(engines, validator, rng, args.cost_repeats)
    log(f"cost {cost}")

    honest_scores = [v.score for v in verdicts]
    honest_means = [v.metrics.lp_mean for v in verdicts]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, result in attack_results.items():
        plot(name, honest_scores, honest_means, result, thresholds, RESULTS / f"detection{suffix}_{name}.png")
    plot_auc(auc, RESULTS / f"detection{suffix}_auc.png")
    report = dict(
        mode="quick" if args.quick else "full",
        seconds=round(time.time() - started, 1),
        machine=dict(cpus=os.cpu_count(), torch=torch.__version__),
        models=models,
        safety=SAFETY,
        thresholds=asdict(thresholds),
        honest=dict(
            validations=len(verdicts), false_positives=sum(not v.passed for v in verdicts),
            drift_max=drift, drift_median=float(np.median([r["drift"] for r in honest])),
            lp_mean_max=max(honest_means), lp_max_max=max(v.metrics.lp_max for v in verdicts),
            positions=positions,
            resolved_share=sum(v.metrics.resolved for v in verdicts) / positions,
            resolved_share_sampled=sum(v.metrics.resolved for v in sampled) / max(1, sum(v.metrics.n for v in sampled)),
            ties=sum(v.metrics.ties for v in verdicts),
            bytes_per_token_by_max_tokens={
                n: float(np.mean([bytes_per_token(r["pub"].artifact) for r in honest if r["max_tokens"] == n]))
                for n in sorted({r["max_tokens"] for r in honest})
            },
            by_variation={k: dict(c) for k, c in by_variation.items()},
        ),
        attacks={k: {f: v for f, v in r.items() if f not in ("scores", "lp_means")} for k, r in attack_results.items()},
        attack_setting=dict(tokens=ATTACK_TOKENS, temperature=ATTACK_TEMPERATURE),
        quantization_auc=auc,
        validation_cost=cost,
    )
    (RESULTS / f"detection{suffix}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {RESULTS / f'detection{suffix}.json'}")


if __name__ == "__main__":
    main()
