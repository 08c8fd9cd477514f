"""Detection benchmark: how often the one-pass validator catches each attack, how often it
accuses an honest executor, and what a validation costs.

    python -m benchmarks.detection --quick          # about 2 minutes
    nohup python -m benchmarks.detection --honest 2000 --cases 96 > detection.log &
    nohup python -m benchmarks.detection --only honest --honest 2000 > honest.log &   # ~30 min
    nohup python -m benchmarks.detection --only attacks --cases 256 > attacks.log &    # ~30 min
    nohup python -m benchmarks.detection --only attacks --cases 1000 --attacks wrong_seed no_seed \
        --out detection_seed_temperature.json > seed.log &                              # some attacks

Stages: (1) honest executors under engine variations (1 or 2 threads, batch 1 or 8 with left
padding, a separately loaded validator engine, greedy / T=0.7 / T=1.0, no mask / top-p / top-k /
both, 16 to 256 tokens)
measure the honest logprob drift; (2) thresholds are derived from it (`calibrate`); (3) every
honest artifact and every attack of `benchmarks.attacks` is judged with those thresholds;
(4) int8/int4 separability against the number of output tokens (AUC), and the validation cost.
Writes benchmarks/results/detection[_quick].json and one PNG per attack.

`--only honest` runs stage 1 alone and judges every artifact with the thresholds that ship
(`calibration.DEFAULT`), not with ones derived from the run itself: the false-positive test of
the code as deployed. It rewrites benchmarks/results/detection_honest.json as it goes.
`--only attacks` runs stages 3 and 4 with the same shipped thresholds and writes
benchmarks/results/detection_attacks.{json,png}: each attack case is also run honestly, and an
attack that published exactly the honest artifact is counted apart (harmless, undetectable).
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
from agents.verification.artifact import Artifact, bytes_per_token
from agents.verification.calibration import DEFAULT, SAFETY, VALIDATOR_TOP_K, Thresholds, calibrate
from agents.verification.noise import gumbel_numpy, seed_from_inference_id
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
               top_p: float = 1.0, top_k: int = 0) -> list[Case]:
    cases = []
    for text in _snippets(rng, count):
        request = InferenceRequest(
            model=ref.name, prompt=SYSTEM_PREFIX + text, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, max_price=1, nonce=rng.getrandbits(64), deadline=2_000_000_000, client=CLIENT,
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
    pf = validator.prefill(list(case.prompt_ids) + list(output_ids), VALIDATOR_TOP_K, start=len(case.prompt_ids))
    elapsed = time.perf_counter() - start
    return PrefillScores(pf.topk_ids, pf.topk_logprobs, pf.token_logprobs, pf.token_ranks), elapsed


def judge(validator: Engine, case: Case, pub: Published, thresholds: Thresholds, scores=None,
          resolve_outsiders: bool = True) -> Verdict:
    """The verdict, with `Metrics.resolved` exact unless `resolve_outsiders` is off (as a node runs
    it: the same verdict, cheaper)."""
    faults = precheck(pub.artifact, case.request.request_hash, validator.vocab_size)
    if faults:
        return Verdict(False, 0, faults)
    scores = scores or scores_for(validator, case, pub.artifact.output_ids)[0]
    return validate(
        pub.artifact, scores, request_hash=case.request.request_hash, seed=case.seed,
        completion_tokens=pub.artifact.n, eos_id=validator.eos_id, vocab_size=validator.vocab_size,
        thresholds=thresholds, resolve_outsiders=resolve_outsiders,
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
# the signed masks, cycled more slowly than the variations so that every combination occurs
HONEST_MASKS = [dict(top_p=1.0, top_k=0), dict(top_p=0.9, top_k=0), dict(top_p=1.0, top_k=20),
                dict(top_p=0.95, top_k=50)]


def run_honest(engines: Engines, validator: Engine, rng: random.Random, total: int, log):
    """Executes `total` honest inferences in groups over the variation grid and yields each
    artifact with the validator's prefill, so that it can be judged now or after calibration."""
    done = group = 0
    while done < total:
        name, executor, threads = HONEST_VARIATIONS[group % len(HONEST_VARIATIONS)]
        temperature = HONEST_TEMPERATURES[group % len(HONEST_TEMPERATURES)]
        length = HONEST_LENGTHS[(group // 2) % len(HONEST_LENGTHS)]
        mask = HONEST_MASKS[(group // 12) % len(HONEST_MASKS)]
        size = 8 if name.startswith("batch") else 2
        cases = make_cases(engines.ref, rng, min(size, total - done), length, temperature, **mask)
        for case, pub in zip(cases, executor(engines, cases, threads)):
            torch.set_num_threads(3 - threads)  # the validator uses the other thread count
            scores, _ = scores_for(validator, case, pub.artifact.output_ids)
            done += 1
            yield dict(variation=name, temperature=temperature, max_tokens=length, mask=mask, case=case,
                       pub=pub, scores=scores, drift=honest_drift(pub, scores))
        group += 1
        log(f"honest {done}/{total}")


def honest_summary(honest: list[dict], verdicts: list[Verdict]) -> dict:
    """False positives overall and per variation, drift, resolution and artifact size."""
    by_variation: dict[str, Counter] = {}
    for r, v in zip(honest, verdicts):
        mask = f"top_p={r['mask']['top_p']},top_k={r['mask']['top_k']}"
        for key in (r["variation"], f"T={r['temperature']}", f"max_tokens={r['max_tokens']}", mask):
            by_variation.setdefault(key, Counter())["n"] += 1
            by_variation[key]["false_positives"] += not v.passed
    positions = sum(v.metrics.n for v in verdicts)
    sampled = [v for r, v in zip(honest, verdicts) if r["temperature"] > 0]
    return dict(
        validations=len(verdicts), false_positives=sum(not v.passed for v in verdicts),
        false_positive_faults=[[asdict(f) for f in v.faults] for v in verdicts if not v.passed][:20],
        drift_max=max(r["drift"] for r in honest), drift_median=float(np.median([r["drift"] for r in honest])),
        lp_mean_max=max(v.metrics.lp_mean for v in verdicts), lp_max_max=max(v.metrics.lp_max for v in verdicts),
        positions=positions,
        resolved_share=sum(v.metrics.resolved for v in verdicts) / positions,
        resolved_share_sampled=sum(v.metrics.resolved for v in sampled) / max(1, sum(v.metrics.n for v in sampled)),
        ties=sum(v.metrics.ties for v in verdicts),
        bytes_per_token_by_max_tokens={
            n: float(np.mean([r["bytes_per_token"] for r in honest if r["max_tokens"] == n]))
            for n in sorted({r["max_tokens"] for r in honest})
        },
        by_variation={k: dict(c) for k, c in sorted(by_variation.items())},
    )


def main_honest(engines: Engines, validator: Engine, rng: random.Random, args, header: dict, log) -> None:
    """Stage 1 alone, judged with the shipped thresholds as it goes; the file is rewritten every
    100 validations so that an interrupted run still reports what it saw."""
    path = RESULTS / (args.out or "detection_honest.json")
    kept, verdicts = [], []
    for r in run_honest(engines, validator, rng, args.honest, log):
        verdict = judge(validator, r["case"], r["pub"], DEFAULT, r["scores"])
        if not verdict.passed:
            log(f"FALSE POSITIVE {r['variation']} T={r['temperature']} {r['mask']}: {verdict.faults[:3]}")
        r["bytes_per_token"] = bytes_per_token(r["pub"].artifact)
        kept.append({f: v for f, v in r.items() if f not in ("case", "pub", "scores")})
        verdicts.append(verdict)
        if len(kept) % 100 == 0 or len(kept) == args.honest:
            drift = max(x["drift"] for x in kept)
            report = dict(header, seconds=round(time.time() - header["started"], 1), complete=len(kept) == args.honest,
                          thresholds=asdict(DEFAULT), thresholds_from_this_run=asdict(calibrate(drift)),
                          honest=honest_summary(kept, verdicts))
            path.write_text(json.dumps(report, indent=2, default=str) + "\n")
            log(f"wrote {path}: {report['honest']['false_positives']} false positives in {len(kept)}")


def _miss(pub: Published, honest: Published, verdict: Verdict) -> dict:
    """What an undetected effective attack looked like: where its tokens left the honest ones."""
    a, h = pub.artifact.output_ids, honest.artifact.output_ids
    common = min(len(a), len(h))
    differ = np.nonzero(a[:common] != h[:common])[0]
    first = int(differ[0]) if differ.size else common
    return dict(tokens=len(a), honest_tokens=len(h), first_difference=first,
                positions_after=len(a) - first, resolved=verdict.metrics.resolved, ties=verdict.metrics.ties,
                lp_mean=verdict.metrics.lp_mean)


# top-K values at which `run_attacks` counts the effective cases no position could be proven in
PROOF_TOP_KS = (20, 64, 128, 256, 512, 1024, 4096)
PROOF_ATTACKS = ("wrong_seed", "no_seed", "temperature_lower", "temperature_higher")


def proving_rank(validator: Engine, case: Case, pub: Published, thresholds: Thresholds) -> int | None:
    """For unmasked sampling: the smallest validator top-K with which some position of this
    answer is a proven sampling fault, i.e. over the positions, the best vocabulary rank of a
    token whose perturbed score beats the executor's by more than tie_eps; None if even the
    whole vocabulary proves nothing. Explains a miss: the rival ranked below VALIDATOR_TOP_K."""
    params = case.request.sampling
    if params.greedy or params.top_p < 1.0 or params.top_k:
        return None
    ids = list(pub.artifact.output_ids)
    full = validator.prefill(list(case.prompt_ids) + ids, validator.vocab_size, start=len(case.prompt_ids))
    best = None
    for t, x in enumerate(ids):
        order = full.topk_ids[t]
        s = full.topk_logprobs[t].astype(np.float64) + params.temperature * gumbel_numpy(case.seed, t, len(order))[order]
        beats = np.nonzero(s > s[order == x][0] + thresholds.tie_eps)[0]
        if beats.size and (best is None or beats[0] + 1 < best):
            best = int(beats[0]) + 1
    return best


def run_attacks(engines: Engines, validator: Engine, rng: random.Random, count: int, thresholds, log,
                names=None) -> dict:
    """Each attack (all, or those `names`) on `count` fresh cases, beside the honest executor on
    the same cases: an attack that published exactly the honest artifact
    (`attacks.same_as_honest`) was harmless, so the rate among the effective ones is reported too."""
    results = {}
    for name in names or attacks.ATTACKS:
        attack = attacks.ATTACKS[name]
        torch.set_num_threads(1)
        cases = make_cases(engines.ref, rng, count, ATTACK_TOKENS, ATTACK_TEMPERATURE,
                           **attacks.SIGNED.get(name, {}))
        verdicts, effective, missed, ranks = [], [], [], []
        for i in range(0, count, 8):
            chunk = cases[i : i + 8]
            for case, pub, honest in zip(chunk, attack(engines, chunk), attacks.honest_batch(engines, chunk)):
                verdicts.append(judge(validator, case, pub, thresholds))
                effective.append(not attacks.same_as_honest(pub, honest))
                proof = {}
                if effective[-1] and name in PROOF_ATTACKS:
                    ranks.append(proving_rank(validator, case, pub, thresholds))
                    proof = dict(proving_rank=ranks[-1])
                if effective[-1] and verdicts[-1].passed:
                    missed.append(_miss(pub, honest, verdicts[-1]) | proof)
        caught = [not v.passed for v in verdicts]
        n_effective = sum(effective)
        kinds = Counter(f.kind for v in verdicts for f in v.faults)
        results[name] = dict(
            n=len(verdicts), detected=sum(caught), rate=sum(caught) / len(verdicts),
            effective=n_effective, effective_detected=sum(c for c, e in zip(caught, effective) if e),
            effective_rate=sum(c for c, e in zip(caught, effective) if e) / n_effective if n_effective else None,
            harmless_detected=sum(c for c, e in zip(caught, effective) if not e),
            mean_faulty_positions=float(np.mean([len({f.position for f in v.faults}) for v in verdicts])),
            mean_output_tokens=float(np.mean([v.metrics.n for v in verdicts])),
            fault_kinds=dict(kinds.most_common()),
            missed_effective=missed,
            # effective cases with no provable position at each top-K (PROOF_ATTACKS only)
            unprovable_at_top_k={k: sum(r is None or r > k for r in ranks) for k in PROOF_TOP_KS} if ranks else None,
            scores=[v.score for v in verdicts], lp_means=[v.metrics.lp_mean for v in verdicts],
        )
        log(f"attack {name}: detected {sum(caught)}/{count}, effective {results[name]['effective_detected']}/{n_effective}")
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


def run_cost(engines: Engines, validator: Engine, rng: random.Random, repeats: int,
             threads: int = 1) -> dict:
    """Validator compute over executor compute for the same inference on the same engine, both at
    `threads` torch threads, single requests, medians: the prefill over the output positions (what
    the validator runs), the same with the top-20 it asked for before, the prefill over every
    position (what it ran before that), and the judging (as a node's validator runs it)."""
    torch.set_num_threads(threads)
    out = {}
    for length in (64, 256):
        gen_s, pre_s, top20_s, all_s, judge_s = [], [], [], [], []
        for case in make_cases(engines.ref, rng, repeats, length, ATTACK_TEMPERATURE):
            start = time.perf_counter()
            g = engines.ref.generate(case.prompt_ids, case.request.sampling, case.seed, length, attacks.K)
            scale = length / len(g.output_ids)  # an early EOS: per-token figures, scaled to `length`
            gen_s.append((time.perf_counter() - start) * scale)
            scores, elapsed = scores_for(validator, case, g.output_ids)
            pre_s.append(elapsed * scale)
            start = time.perf_counter()
            validator.prefill(list(case.prompt_ids) + g.output_ids, 20, start=len(case.prompt_ids))
            top20_s.append((time.perf_counter() - start) * scale)
            start = time.perf_counter()
            validator.prefill(list(case.prompt_ids) + g.output_ids, VALIDATOR_TOP_K)
            all_s.append((time.perf_counter() - start) * scale)
            pub = Published(case.request, Artifact.build(case.request, case.seed, g.output_ids, g.topk_ids, g.topk_logprobs))
            start = time.perf_counter()
            judge(validator, case, pub, DEFAULT, scores, resolve_outsiders=False)  # as a node does
            judge_s.append((time.perf_counter() - start) * scale)
        gen, pre, judged = (float(np.median(x)) for x in (gen_s, pre_s, judge_s))
        top20 = float(np.median(top20_s))
        out[length] = dict(generate_s=gen, prefill_s=pre, top_k=VALIDATOR_TOP_K, prefill_top20_s=top20,
                           ratio_top20=top20 / gen, prefill_all_positions_s=float(np.median(all_s)),
                           judge_s=judged, ratio=pre / gen, ratio_with_judging=(pre + judged) / gen,
                           ratio_all_positions=float(np.median(all_s)) / gen, repeats=repeats,
                           temperature=ATTACK_TEMPERATURE, threads=threads)
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


def plot_rates(results: dict, path: Path) -> None:
    """Detection rate per attack: over all cases and over the effective ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.2))
    ax.barh(y - 0.2, [results[n]["rate"] for n in names], 0.4, label="all cases")
    ax.barh(y + 0.2, [results[n]["effective_rate"] or 0 for n in names], 0.4, label="effective (output differs)")
    ax.set_yticks(y, [f"{n} ({results[n]['effective']}/{results[n]['n']})" for n in names], fontsize=8)
    ax.set_xlim(0.8, 1.0)
    ax.set_xlabel(f"detection rate at {ATTACK_TOKENS} tokens, T={ATTACK_TEMPERATURE}")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main_attacks(engines: Engines, validator: Engine, rng: random.Random, args, header: dict, started: float, log) -> None:
    """Stages 3 and 4 with the shipped thresholds: attacks, quantization AUC, validation cost.
    With `--attacks`, the named attacks alone, into `--out` (default detection_attacks_some.json)."""
    results = run_attacks(engines, validator, rng, args.cases, DEFAULT, log, args.attacks)
    stem = Path(args.out or ("detection_attacks_some.json" if args.attacks else "detection_attacks.json")).stem
    plot_rates(results, RESULTS / f"{stem}.png")
    extra = {}
    if not args.attacks:
        auc = run_auc(engines, validator, rng, args.auc, log)
        extra = dict(quantization_auc=auc, validation_cost=run_cost(engines, validator, rng, args.cost_repeats))
        log(f"cost {extra['validation_cost']}")
        plot_auc(auc, RESULTS / f"{stem}_auc.png")
    report = dict(
        header, seconds=round(time.time() - started, 1), machine=dict(cpus=os.cpu_count(), torch=torch.__version__),
        thresholds=asdict(DEFAULT), validator_top_k=VALIDATOR_TOP_K, cases=args.cases,
        attack_setting=dict(tokens=ATTACK_TOKENS, temperature=ATTACK_TEMPERATURE),
        attacks={k: {f: v for f, v in r.items() if f not in ("scores", "lp_means")} for k, r in results.items()},
        **extra,
    )
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {path}")


def _manifest_sha(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about 2 minutes)")
    parser.add_argument("--honest", type=int, default=2000, help="honest validations")
    parser.add_argument("--cases", type=int, default=96, help="validations per attack")
    parser.add_argument("--auc", type=int, default=64, help="256-token artifacts per side for the AUC")
    parser.add_argument("--cost-repeats", type=int, default=5)
    parser.add_argument("--cost-threads", type=int, nargs="+", default=[1],
                        help="with --only cost: torch threads of both engines, one run each (torch's "
                        "default is one per core; the devnet's model nodes use 1)")
    parser.add_argument("--ref", type=Path, default=ROOT / "models/ref-tiny")
    parser.add_argument("--sub", type=Path, default=ROOT / "models/sub-nano")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--only", choices=["honest", "attacks", "cost"], help="run part of the benchmark (see the module doc)")
    parser.add_argument("--out", help="results file name for --only honest or attacks (default "
                        "detection_honest.json, detection_attacks.json)")
    parser.add_argument("--attacks", nargs="+", choices=list(attacks.ATTACKS), metavar="ATTACK",
                        help="with --only attacks: these attacks alone, without the AUC and cost stages")
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
    if args.only == "honest":
        header = dict(mode="honest", seed=args.seed, started=started, machine=dict(cpus=os.cpu_count(), torch=torch.__version__),
                      models=models, safety=SAFETY)
        return main_honest(engines, validator, rng, args, header, log)
    if args.only == "cost":  # stage 4's timing alone, for a quiet machine
        by_threads = {n: run_cost(engines, validator, random.Random(args.seed), args.cost_repeats, n)
                      for n in args.cost_threads}
        cost = by_threads[args.cost_threads[0]]
        report = dict(mode="cost", models=models, seconds=round(time.time() - started, 1),
                      machine=dict(cpus=os.cpu_count(), torch=torch.__version__, load_avg=os.getloadavg()),
                      validation_cost=cost, validation_cost_by_threads=by_threads)
        (RESULTS / "detection_cost.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return log(f"cost {cost}")
    if args.only == "attacks":
        return main_attacks(engines, validator, rng, args, dict(mode="attacks", models=models, safety=SAFETY, seed=args.seed), started, log)

    honest = list(run_honest(engines, validator, rng, args.honest, log))
    drift = max(r["drift"] for r in honest)
    thresholds = calibrate(drift)
    log(f"honest drift {drift:.3g} -> {thresholds}")
    verdicts = [judge(validator, r["case"], r["pub"], thresholds, r["scores"]) for r in honest]
    for r in honest:
        r["bytes_per_token"] = bytes_per_token(r["pub"].artifact)

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
        honest=honest_summary(honest, verdicts),
        attacks={k: {f: v for f, v in r.items() if f not in ("scores", "lp_means")} for k, r in attack_results.items()},
        attack_setting=dict(tokens=ATTACK_TOKENS, temperature=ATTACK_TEMPERATURE),
        quantization_auc=auc,
        validation_cost=cost,
    )
    (RESULTS / f"detection{suffix}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {RESULTS / f'detection{suffix}.json'}")


if __name__ == "__main__":
    main()
