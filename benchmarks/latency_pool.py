"""Pool the pairs of several latency runs at one answer length: the p50 ratio over all of them and
its 95% interval, with each run's own figures beside it.

    python -m benchmarks.latency_pool latency.s14-balanced latency.s14-balanced-rerun

One run's interval at 64 tokens is 2 hundredths wide at 1000 pairs; runs of the same code and
benchmark pooled narrow it further. Each run's pairs are resampled within the run, so a run on a
faster or slower stretch of this shared machine weighs as many pairs as it has. Reads
benchmarks/results/<name>.json; writes nothing.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import RESULTS, show
from benchmarks.latency import pooled_ratio_p50_interval


def pairs(name: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(gateway, direct) seconds of run `name`'s pairs at `max_tokens`."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"no latency results at {path}")
    report = json.loads(path.read_text())
    try:
        samples = report["samples"][str(max_tokens)]
    except KeyError:
        raise SystemExit(f"{name} has no pairs at {max_tokens} max tokens") from None
    return np.array([s["gateway_s"] for s in samples]), np.array([s["direct_s"] for s in samples])


def ratio_p50(gateway: np.ndarray, direct: np.ndarray) -> float:
    return float(np.median(gateway) / np.median(direct))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="results file stems, as written by benchmarks.latency")
    p.add_argument("--max-tokens", type=int, default=64, help="the answer length to pool")
    args = p.parse_args(argv)
    runs = {name: pairs(name, args.max_tokens) for name in args.names}
    rows = [[name, len(g), ratio_p50(g, d), span(pooled_ratio_p50_interval([(g, d)]))]
            for name, (g, d) in runs.items()]
    gateway = np.concatenate([g for g, _ in runs.values()])
    direct = np.concatenate([d for _, d in runs.values()])
    interval = pooled_ratio_p50_interval(list(runs.values()))
    rows.append(["pooled", len(gateway), ratio_p50(gateway, direct), span(interval)])
    show(f"p50 ratio gateway / direct at {args.max_tokens} max tokens",
         ["run", "pairs", "p50 ratio", "95% interval"], rows)
    return {"pairs": len(gateway), "ratio_p50": ratio_p50(gateway, direct),
            "ratio_p50_ci95": interval}


def span(interval: list[float]) -> str:
    return "{:.3f} to {:.3f}".format(*interval)


if __name__ == "__main__":
    main()
