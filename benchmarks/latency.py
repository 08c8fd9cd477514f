"""Latency benchmark: what the gateway path adds over calling a model node directly.

    python -m benchmarks.latency                   # about 9 minutes on 2 cores
    python -m benchmarks.latency --pairs 1000 --max-tokens 64 --name latency.big  # about 17

Brings up an honest devnet (no cheaters) and sends the same requests (same prompt, max_tokens,
temperature 0 or seeded temperature 1.0) (a) straight to a model node's `/v1/completions` and
(b) through the gateway with the signing client (sign, gateway checks, draw, signed order, executor
checks, model call with top-k logprobs, artifact, receipt, client check of the receipt). Both
timings end with the answer parsed. The direct call uses the seed the executor derives from the
inference id, so both paths produce the same tokens, and it goes to the model node of the executor
the gateway draws, so both run on the same node: with every direct call on one node, the other
nodes, colder on these shared cores, ran the gateway's 256-token answers 16 to 19 ms slower on
average (`latency.s13-base.json`). When the gateway goes first, its answer names the executor; when
the direct call does, the draw is computed ahead (`DirectNodes.predict`), and each pair records
whether the nodes matched. Every pair waits for that draw's block, whichever path goes first, so
both orders start after the same idle time.

Pairs are interleaved, across answer lengths too, in an order shuffled per round (seeded), and
alternate which path goes first, so that machine noise hits both alike: with a fixed order, every
short pair ran while the devnet validated the long answer before it. Each case (prompt and
temperature) also alternates its first path from one round to the next (`first_path`): a pair's
first call runs slower, and when the order alternated with the pair alone, the 12 cases tied it to
the temperature, so every greedy pair, whose 64-token answers sit at the p50, went through the
gateway first (`latency.s14-long`: p50 ratio 1.080 for those, 1.029 for the sampled ones).

The gateway's and the executor's Server-Timing phases are kept per request, and with them what the
path adds beyond the executor's model call (`path_p50_ms`), which the model's own noise does not
move. 150 pairs per length: at 60, the p50 ratio's 95% bootstrap interval was 5 to 14 hundredths
wide, at 150 still 4 to 8, at 1000 (one length) 2. Writes benchmarks/results/<name>.json and
<name>.png.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from agents.client.sdk import NulliusClient
from agents.devnet import network
from agents.node.config import NodeSettings
from agents.protocol.eip712 import inference_id, model_id
from agents.verification.noise import seed_from_inference_id
from benchmarks.common import PROMPTS as COMMON_PROMPTS
from benchmarks.common import machine, percentile, pyplot, show, write_json

# the first six of the shared prompts, as in the published latency runs
PROMPTS = COMMON_PROMPTS[:6]
TEMPERATURES = (0.0, 1.0)
# The gateway reloads its head every `head_refresh` seconds, so it holds a block this long after it
# was mined; the devnet mines one a second.
HEAD_SETTLE_S = NodeSettings.model_fields["head_refresh"].default + 0.05
BLOCK_POLL_S = 0.02


class DirectNodes:
    """An HTTP client per participant's model node, by participant address, and the draw's pick."""

    def __init__(self, net: network.Devnet, client: NulliusClient):
        self.client = client
        self.http = {p.address.lower(): httpx.Client(base_url=p.mlnode_url, timeout=120)
                     for p in net.participants}

    def __call__(self, executor: str) -> httpx.Client:
        return self.http[executor.lower()]

    def predict(self, model: str, iid: bytes) -> str:
        """The executor the gateway will draw for inference `iid`: the Ledger's draw seeded by a block
        just mined, once the gateway holds it. It holds while the pair's calls end before the
        next block: 64-token pairs do; 256-token ones, near a second a call, not always."""
        view = self.client.view
        head = view.block_number()
        while (latest := view.block_number()) == head:
            time.sleep(BLOCK_POLL_S)
        time.sleep(HEAD_SETTLE_S)
        return view.draw_executor(model_id(model), iid, latest)

    def close(self) -> None:
        for http in self.http.values():
            http.close()


def direct_body(model: str, prompt: str, max_tokens: int, temperature: float, seed: int) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "top_p": 1.0, "top_k": 0, "seed": seed}


def run_pair(client: NulliusClient, nodes: DirectNodes, prompt: str, max_tokens: int,
             temperature: float, max_price: int, gateway_first: bool) -> dict:
    request = client.build_request(prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                                   max_price=max_price)
    iid = inference_id(request, client.domain)
    seed = seed_from_inference_id(iid)
    body = direct_body(request.model, prompt, max_tokens, temperature, seed)

    def via_gateway():
        t0 = time.perf_counter()
        result = client.send(request, client.sign(request))
        return time.perf_counter() - t0, result

    def straight(node: str):
        t0 = time.perf_counter()
        r = nodes(node).post("/v1/completions", json=body)
        r.raise_for_status()
        answer = r.json()  # both timings end with the answer parsed, as a caller needs it
        return time.perf_counter() - t0, answer

    # every pair waits for the draw's block, whichever path goes first, so that both orders start
    # after the same idle time: a first call after an idle second ran up to 10 ms slower
    predicted = nodes.predict(request.model, iid)
    if gateway_first:
        t_gw, result = via_gateway()
        node = result.executor
        t_direct, answer = straight(node)
    else:
        node = predicted
        t_direct, answer = straight(node)
        t_gw, result = via_gateway()
    return {"prompt": prompt, "temperature": temperature, "gateway_first": gateway_first,
            "direct_node": node, "same_node": node.lower() == result.executor.lower(),
            "draw_predicted": predicted.lower() == result.executor.lower(),
            "direct_s": t_direct, "gateway_s": t_gw,
            "direct_tokens": answer["usage"]["completion_tokens"],
            "gateway_tokens": result.receipt.completion_tokens,
            "same_text": answer["choices"][0]["text"] == result.text,
            "executor": result.executor, "timings_ms": result.timings}


def first_path(i: int, cases: int) -> bool:
    """Whether round `i` goes through the gateway first: alternately from one round to the next,
    and for each of the `cases` (taken in turn) from one of its rounds to the next."""
    return (i + i // cases) % 2 == 0


def summarize(samples: list[dict]) -> dict:
    direct = [s["direct_s"] for s in samples]
    gateway = [s["gateway_s"] for s in samples]
    overhead = [s["gateway_s"] - s["direct_s"] for s in samples]
    out = {"pairs": len(samples)}
    for q in (50, 99):
        out[f"direct_p{q}_ms"] = 1000 * percentile(direct, q)
        out[f"gateway_p{q}_ms"] = 1000 * percentile(gateway, q)
        out[f"ratio_p{q}"] = percentile(gateway, q) / percentile(direct, q)
    out["ratio_p50_ci95"] = ratio_p50_interval(np.array(gateway), np.array(direct))
    out["overhead_p50_ms"] = 1000 * percentile(overhead, 50)
    # the paired overhead by the path that went first: the gap is what a pair's first call pays
    # (NaN for an order no pair took, as in a one-pair run)
    by_first = {first: [o for o, s in zip(overhead, samples)
                        if s["gateway_first"] == (first == "gateway")]
                for first in ("gateway", "direct")}
    out["overhead_p50_ms_by_first"] = {first: 1000 * percentile(o, 50) if o else float("nan")
                                       for first, o in by_first.items()}
    # the gateway path's time less the executor's model call: the hops, checks and receipt alone
    out["path_p50_ms"] = percentile([1000 * s["gateway_s"] - s["timings_ms"]["executor-model"]
                                     for s in samples], 50)
    out["paired_ratio_p50"] = percentile(np.array(gateway) / np.array(direct), 50)
    out["completion_tokens_mean"] = float(np.mean([s["gateway_tokens"] for s in samples]))
    out["same_tokens"] = sum(s["direct_tokens"] == s["gateway_tokens"] for s in samples)
    out["same_text"] = sum(s["same_text"] for s in samples)
    out["same_node"] = sum(s["same_node"] for s in samples)
    out["draw_predicted"] = sum(s["draw_predicted"] for s in samples)
    # the gateway's and executor's phases (Server-Timing), p50 of each
    phases = dict.fromkeys(k for s in samples for k in s["timings_ms"])
    out["phases_p50_ms"] = {k: percentile([s["timings_ms"].get(k, 0.0) for s in samples], 50)
                            for k in phases}
    return out


def ratio_p50_interval(gateway: np.ndarray, direct: np.ndarray, resamples: int = 4000) -> list[float]:
    """The p50 ratio's 95% interval, from the pairs resampled with replacement (seeded)."""
    return pooled_ratio_p50_interval([(gateway, direct)], resamples)


def pooled_ratio_p50_interval(runs: list[tuple[np.ndarray, np.ndarray]],
                              resamples: int = 4000) -> list[float]:
    """The 95% interval of the p50 ratio over the pairs of several runs, (gateway, direct) each:
    every run's pairs are resampled with replacement within the run (seeded)."""
    rng = np.random.default_rng(0)
    picks = [(g[idx], d[idx]) for g, d in runs
             for idx in [rng.integers(0, len(g), (resamples, len(g)))]]
    gateway = np.concatenate([g for g, _ in picks], axis=1)
    direct = np.concatenate([d for _, d in picks], axis=1)
    ratios = np.median(gateway, axis=1) / np.median(direct, axis=1)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def plot(by_length: dict[int, list[dict]], summaries: dict[int, dict], path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for n, samples in by_length.items():
        for key, label, style in (("direct_s", "direct", "--"), ("gateway_s", "gateway", "-")):
            ms = np.sort([1000 * s[key] for s in samples])
            ax1.plot(ms, np.arange(1, len(ms) + 1) / len(ms), style, label=f"{label}, {n} max tokens")
        ax2.hist([1000 * (s["gateway_s"] - s["direct_s"]) for s in samples], bins=30, alpha=0.6,
                 label=f"{n} max tokens: p50 ratio {summaries[n]['ratio_p50']:.3f}")
    ax1.set_xscale("log")
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title("latency CDF")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("gateway - direct, same request (ms)")
    ax2.set_title("paired overhead")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--participants", type=int, default=3)
    p.add_argument("--pairs", type=int, default=150,
                   help="measured (direct, gateway) pairs per answer length")
    p.add_argument("--warmup", type=int, default=6, help="unmeasured pairs first")
    p.add_argument("--max-tokens", type=int, nargs="+", default=[64, 256],
                   help="answer lengths, measured interleaved in one run")
    p.add_argument("--name", default="latency", help="results file stem")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nullius-latency-") as tmp:
        config = network.DevnetConfig(participants=args.participants, cheaters=0, clients=1,
                                      data_dir=Path(tmp) / "devnet")
        net = network.start(config, log=lambda m: print(f"devnet: {m}"))
        try:
            client = NulliusClient(net.gateway_url, net.rpc_url, net.client_keys[0], net.deployments)
            client.deposit(50 * network.TOKEN)
            max_price = client.price(network.MODEL_NAME)
            cases = [(pr, t) for pr in PROMPTS for t in TEMPERATURES]
            nodes = DirectNodes(net, client)
            by_length: dict[int, list[dict]] = {n: [] for n in args.max_tokens}
            order = random.Random(0)
            rounds = args.warmup + args.pairs
            try:
                for i in range(rounds):
                    prompt, temperature = cases[i % len(cases)]
                    for n in order.sample(args.max_tokens, len(args.max_tokens)):
                        s = run_pair(client, nodes, prompt, n, temperature, max_price,
                                     gateway_first=first_path(i, len(cases)))
                        if i >= args.warmup:
                            by_length[n].append(s)
            finally:
                nodes.close()
        finally:
            net.stop()

    summaries = {n: summarize(samples) for n, samples in by_length.items()}
    report = {"benchmark": "latency", "machine": machine(),
              "config": {"participants": args.participants, "pairs": args.pairs,
                         "warmup": args.warmup, "max_tokens": args.max_tokens,
                         "temperatures": list(TEMPERATURES), "prompts": PROMPTS,
                         "direct": "the executor's model node",
                         "mlnode_threads": config.mlnode_threads, "model": network.MODEL_NAME},
              "summary": {str(n): summary for n, summary in summaries.items()},
              "samples": {str(n): samples for n, samples in by_length.items()}}
    path = write_json(args.name, report)
    plot(by_length, summaries, path.with_suffix(".png"))
    for n, summary in summaries.items():
        show(f"gateway vs direct, {summary['pairs']} pairs, {n} max tokens, "
             f"mean {summary['completion_tokens_mean']:.1f} output tokens",
             ["", "p50 (ms)", "p99 (ms)"],
             [["direct to model node", summary["direct_p50_ms"], summary["direct_p99_ms"]],
              ["through gateway", summary["gateway_p50_ms"], summary["gateway_p99_ms"]],
              ["ratio gateway / direct", summary["ratio_p50"], summary["ratio_p99"]],
              ["p50 ratio, 95% interval", "{:.3f} to {:.3f}".format(*summary["ratio_p50_ci95"]), ""],
              ["paired overhead (ms)", summary["overhead_p50_ms"], ""],
              ["  gateway first / direct first",
               "{gateway:.1f} / {direct:.1f}".format(**summary["overhead_p50_ms_by_first"]), ""],
              ["path less the model call (ms)", summary["path_p50_ms"], ""]])
        show(f"where the gateway path's time goes at {n} max tokens (Server-Timing, p50)",
             ["phase", "ms"], [[name, ms] for name, ms in summary["phases_p50_ms"].items()])
        print(f"same tokens in {summary['same_tokens']}/{summary['pairs']} pairs, the direct call "
              f"on the executor's model node in {summary['same_node']}, the draw computed ahead "
              f"right in {summary['draw_predicted']}")
    print(f"wrote {path}")
    return report

if __name__ == "__main__":
    main()
