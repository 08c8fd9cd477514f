"""Economic simulation: does cheating pay under the deployed parameters?

    python -m benchmarks.economics                  # defaults: agents.chain.deploy.DeployParams
    python -m benchmarks.economics --slash-bps 0 --requests-per-epoch 20

A participant with stake S serves N requests per epoch, T tokens each, at price p per token, and
spends a fraction k of the price on compute. A cheater serves a cheaper substitute on each request
with probability f, saving a fraction c of that request's compute. Each inference is validated with
probability p_v(r) = 1 - 0.99 r / r_max (the Ledger's formula, fixed at finish from the executor's
reputation r); a validated cheat fails with the detection rate d measured by the verification
benchmark, and the jury upholds a failed verdict with probability u. When caught in an epoch the
cheater forfeits the epoch's fees and its share of the epoch reward, its reputation drops to 0 and
slash_bps of its stake is slashed. A clean epoch raises reputation by one, up to r_max.

Two views, both as expected profit per epoch, cheat minus honest:
- one epoch at a fixed reputation (0, r_max/2, r_max): the short-run temptation;
- the long run: the Markov chain over reputation (clean epoch: r+1; caught: 0), whose stationary
  distribution weighs the per-epoch profits, against the honest participant at r_max.
It also gives the expected epochs and requests until a cheater is first caught (starting from each
reputation level), the catches until its stake falls below min_stake (ejected from the draw), and
the break-even value of each parameter: where cheating would start to pay.

Simplifications, each one in the cheater's favour: one slash per epoch however many cheats are
caught in it; a catch does not raise the validation probability for the rest of that epoch; its
validator fees and its stake's growth are left out; no discounting. Writes
benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from agents.chain.deploy import TOKEN, DeployParams
from benchmarks.common import RESULTS, console, pyplot, show, write_json

BPS = 10_000
MIN_VALIDATION_BPS = 100  # the Ledger's floor: 1% at full reputation
F_GRID = np.logspace(-4, 0, 401)  # f in (0, 1], dense where the catch probability is small

# Assumptions where neither the deployment nor a benchmark fixes a figure. Each is a flag.
ASSUMED = {
    "price_per_token": "the devnet's registered price (agents/devnet/network.py), 1e-6 token",
    "tokens_per_request": "the devnet demo's max_tokens",
    "requests_per_epoch": "an assumed load per participant and epoch",
    "compute_cost_share": "assumed: half of the price pays for compute",
    "saving": "assumed: the substitute costs a tenth of the reference model",
    "stake": "the devnet's stake per participant (agents/devnet/network.py)",
    "epoch_reward": "DeployParams.reward_per_epoch split evenly over the devnet's participants",
    "jury_upholds": "assumed: an honest stake majority on the jury confirms a true failed verdict",
}


@dataclass(frozen=True)
class Economy:
    """Every input of the model; amounts in whole tokens."""

    stake: float
    min_stake: float
    slash_bps: int
    max_reputation: int
    validator_fee_bps: int
    price_per_token: float
    tokens_per_request: int
    requests_per_epoch: int
    compute_cost_share: float  # k
    saving: float  # c
    detection: float  # d
    jury_upholds: float  # u
    epoch_reward: float  # this participant's share of the epoch's reward pool
    accuser_penalty_bps: int

    @property
    def fee(self) -> float:
        """What a client pays for one request."""
        return self.price_per_token * self.tokens_per_request

    def p_validate(self, reputation: int) -> float:
        rep = min(reputation, self.max_reputation)
        return (BPS - (BPS - MIN_VALIDATION_BPS) * rep // self.max_reputation) / BPS

    def p_caught(self, f, reputation: int):
        """Probability that at least one of the epoch's N requests is a cheat that is caught."""
        q = self.p_validate(reputation) * self.detection * self.jury_upholds
        return 1.0 - (1.0 - np.asarray(f) * q) ** self.requests_per_epoch

    def revenue(self, reputation: int) -> float:
        """The epoch's fees to the executor: validated requests give the validator its share."""
        share = 1.0 - self.p_validate(reputation) * self.validator_fee_bps / BPS
        return self.requests_per_epoch * self.fee * share + self.epoch_reward

    def honest(self, reputation: int) -> float:
        return self.revenue(reputation) - self.requests_per_epoch * self.fee * self.compute_cost_share

    def cheat(self, f, reputation: int):
        f = np.asarray(f)
        caught = self.p_caught(f, reputation)
        compute = self.requests_per_epoch * self.fee * self.compute_cost_share * (1.0 - self.saving * f)
        slash = self.stake * self.slash_bps / BPS
        return (1.0 - caught) * self.revenue(reputation) - compute - caught * slash

    def long_run_cheat(self, f: float) -> float:
        """Average profit per epoch of a cheater in the stationary distribution over reputation."""
        mu = stationary(self, f)
        return float(sum(mu[r] * self.cheat(f, r) for r in range(self.max_reputation + 1)))

    def epochs_to_catch(self, f: float) -> np.ndarray:
        """Expected epochs until the first catch, from each starting reputation 0..r_max.

        h(r) = 1 + (1 - P(r)) h(min(r + 1, r_max)), with h(r_max) = 1 / P(r_max).
        """
        top = self.max_reputation
        h = np.empty(top + 1)
        p_top = float(self.p_caught(f, top))
        h[top] = math.inf if p_top == 0 else 1.0 / p_top
        for r in range(top - 1, -1, -1):
            h[r] = 1.0 + (1.0 - float(self.p_caught(f, r))) * h[r + 1]
        return h

    def false_accusation_cost(self) -> float:
        """What failing an honest answer costs its accuser once the jury finds it valid: the
        penalty on its stake (it earns nothing from the dispute either way)."""
        return self.stake * self.accuser_penalty_bps / BPS

    def catches_to_eject(self) -> int | None:
        """Slashes until the stake is below min_stake and the participant leaves the draw."""
        keep = 1.0 - self.slash_bps / BPS
        if keep >= 1.0:
            return None
        if keep <= 0.0:
            return 1
        return max(1, math.ceil(math.log(self.min_stake / self.stake) / math.log(keep) - 1e-12))


def stationary(economy: Economy, f: float) -> np.ndarray:
    """The stationary distribution of the reputation chain: clean epoch r -> r+1, caught r -> 0."""
    top = economy.max_reputation
    clean = np.array([1.0 - float(economy.p_caught(f, r)) for r in range(top + 1)])
    # mass at r is mass at 0 times the chance of r clean epochs in a row; the top state absorbs
    weights = np.empty(top + 1)
    weights[0] = 1.0
    for r in range(1, top + 1):
        weights[r] = weights[r - 1] * clean[r - 1]
    if clean[top] >= 1.0:
        return np.eye(top + 1)[top] if weights[top] > 0 else weights / weights.sum()
    weights[top] /= 1.0 - clean[top]
    return weights / weights.sum()


def per_cheat(economy: Economy, f, reputation: int):
    """Expected gain from cheating per cheated request: the epoch's gain over f × N."""
    f = np.asarray(f)
    return (economy.cheat(f, reputation) - economy.honest(reputation)) / (f * economy.requests_per_epoch)


def levels(economy: Economy) -> dict[str, int]:
    return {"0": 0, "mid": economy.max_reputation // 2, "max": economy.max_reputation}


def worst_gain(economy: Economy) -> float:
    """The largest expected gain per cheated request over every f on the grid and every
    reputation, in one epoch and in the long run; negative means cheating never pays."""
    short = max(float(np.max(per_cheat(economy, F_GRID, r))) for r in range(economy.max_reputation + 1))
    honest = economy.honest(economy.max_reputation)
    long = max((economy.long_run_cheat(float(f)) - honest) / (f * economy.requests_per_epoch)
               for f in F_GRID[::10])
    return max(short, long)


def break_even(economy: Economy, field: str, lo: float, hi: float, increasing: bool) -> float | None:
    """The value of `field` where cheating starts (or stops) paying: bisection on worst_gain.

    `increasing`: a larger value makes cheating less attractive (slash, detection, load); the
    result is then the least value at which it does not pay. None: it pays nowhere in [lo, hi];
    inf: it pays everywhere there.
    """
    def pays(x: float) -> bool:
        value = int(round(x)) if isinstance(getattr(economy, field), int) else x
        return worst_gain(replace(economy, **{field: value})) > 0

    if pays(lo) == pays(hi):
        return math.inf if pays(lo) else None
    for _ in range(40):
        mid = (lo + hi) / 2
        if pays(mid) == increasing:
            lo = mid
        else:
            hi = mid
    edge = hi if increasing else lo
    return int(round(edge)) if isinstance(getattr(economy, field), int) else edge


def detection_rate(attack: str, path: Path | None) -> tuple[float, str, int]:
    """The measured detection rate of `attack` per validated inference, from the newest full run
    of benchmarks/detection.py if there is one, else its quick run."""
    candidates = [path] if path else [RESULTS / "detection.json", RESULTS / "detection_quick.json"]
    for candidate in candidates:
        if candidate and candidate.exists():
            entry = json.loads(candidate.read_text())["attacks"][attack]
            return float(entry["rate"]), str(candidate.relative_to(RESULTS.parents[1])), int(entry["n"])
    raise SystemExit(f"no detection results in {', '.join(map(str, candidates))}: "
                     "run python -m benchmarks.detection --quick or pass --detection")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = DeployParams()
    p = argparse.ArgumentParser(prog="python -m benchmarks.economics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stake", type=float, default=1_000.0, help="tokens (%(default)s: devnet)")
    p.add_argument("--min-stake", type=float, default=d.min_stake / TOKEN, help="tokens")
    p.add_argument("--slash-bps", type=int, default=d.slash_bps)
    p.add_argument("--max-reputation", type=int, default=d.max_reputation)
    p.add_argument("--validator-fee-bps", type=int, default=d.validator_fee_bps)
    p.add_argument("--price-per-token", type=float, default=1e-6, help="tokens per output token")
    p.add_argument("--tokens-per-request", type=int, default=48)
    p.add_argument("--requests-per-epoch", type=int, default=100)
    p.add_argument("--compute-cost-share", type=float, default=0.5,
                   help="k: share of the price spent on compute")
    p.add_argument("--saving", type=float, default=0.9, help="c: share of compute a cheat saves")
    p.add_argument("--attack", default="substitute", help="which measured detection rate to use")
    p.add_argument("--detection", type=float, default=None,
                   help="d: override the measured detection rate per validated inference")
    p.add_argument("--detection-results", type=Path, default=None)
    p.add_argument("--jury-upholds", type=float, default=1.0, help="u")
    p.add_argument("--participants", type=int, default=3,
                   help="participants sharing the epoch reward evenly (the devnet's 3)")
    p.add_argument("--epoch-reward", type=float, default=None,
                   help="this participant's share of an epoch's reward, tokens "
                        "(default: reward_per_epoch / participants)")
    p.add_argument("--accuser-penalty-bps", type=int, default=d.accuser_penalty_bps)
    p.add_argument("--name", default="economics")
    return p.parse_args(argv)


def economy_from(args: argparse.Namespace) -> tuple[Economy, dict]:
    d = DeployParams()
    if args.detection is None:
        rate, source, n = detection_rate(args.attack, args.detection_results)
        detection = {"rate": rate, "source": source, "attack": args.attack, "n": n,
                     # the one-sided 95% lower bound when every trial was detected: 0.05^(1/n)
                     "lower_95": 0.05 ** (1 / n) if rate == 1.0 else None}
    else:
        detection = {"rate": args.detection, "source": "--detection", "attack": args.attack}
    economy = Economy(
        stake=args.stake, min_stake=args.min_stake, slash_bps=args.slash_bps,
        max_reputation=args.max_reputation, validator_fee_bps=args.validator_fee_bps,
        price_per_token=args.price_per_token, tokens_per_request=args.tokens_per_request,
        requests_per_epoch=args.requests_per_epoch, compute_cost_share=args.compute_cost_share,
        saving=args.saving, detection=detection["rate"], jury_upholds=args.jury_upholds,
        epoch_reward=(d.reward_per_epoch / TOKEN / args.participants if args.epoch_reward is None
                      else args.epoch_reward),
        accuser_penalty_bps=args.accuser_penalty_bps)
    return economy, detection


def simulate(economy: Economy) -> dict:
    """Everything the report shows, as plain numbers."""
    lv = levels(economy)
    honest_long = economy.honest(economy.max_reputation)
    per_level = {}
    for label, rep in lv.items():
        per_request = per_cheat(economy, F_GRID, rep)
        worst = int(np.argmax(per_request))
        epochs = {str(f): float(economy.epochs_to_catch(f)[rep]) for f in (0.01, 0.1, 1.0)}
        per_level[label] = {
            "reputation": rep, "p_validate": economy.p_validate(rep),
            "honest_profit": economy.honest(rep),
            "gain_at": {str(f): float(economy.cheat(f, rep) - economy.honest(rep))
                        for f in (0.01, 0.1, 0.5, 1.0)},
            "max_gain_per_cheat": float(per_request[worst]),
            "max_gain_per_cheat_at_f": float(F_GRID[worst]),
            "epochs_to_catch": epochs,
            "requests_to_catch": {f: e * economy.requests_per_epoch for f, e in epochs.items()},
        }
    long_f = F_GRID[::10]
    long_gain = [economy.long_run_cheat(float(f)) - honest_long for f in long_f]
    catches = economy.catches_to_eject()
    eject = {str(f): (None if catches is None else float(catches * economy.epochs_to_catch(f)[0]))
             for f in (0.01, 0.1, 1.0)}
    return {
        "levels": per_level,
        "long_run": {"honest_profit": honest_long, "max_gain": float(max(long_gain)),
                     "max_gain_at_f": float(long_f[int(np.argmax(long_gain))])},
        "catches_to_eject": catches,
        "false_accusation_cost": economy.false_accusation_cost(),
        "epochs_to_eject_from_0": eject,
        "worst_gain": worst_gain(economy),
        "curves": {"f": F_GRID[::10].tolist(),
                   **{label: (economy.cheat(F_GRID[::10], rep) - economy.honest(rep)).tolist()
                      for label, rep in lv.items()},
                   "long_f": long_f.tolist(), "long_run": long_gain,
                   "epochs_to_catch": {label: [float(economy.epochs_to_catch(float(f))[rep])
                                               for f in F_GRID[::10]] for label, rep in lv.items()}},
    }


def break_evens(economy: Economy) -> dict:
    """Where one lever alone would make cheating pay, the others as given, and again with no
    epoch reward (the pool is funded for a limited number of epochs). The lightest load, one
    request per epoch, is the hardest case for the slash: the epoch's fees at risk are smallest."""
    out = {}
    for case, e in (("as_given", economy), ("no_epoch_reward", replace(economy, epoch_reward=0.0))):
        out[case] = {
            "slash_bps": break_even(e, "slash_bps", 0, BPS, increasing=True),
            "slash_bps_at_1_request_per_epoch": break_even(replace(e, requests_per_epoch=1), "slash_bps",
                                                           0, BPS, increasing=True),
            "detection": break_even(e, "detection", 0.0, 1.0, increasing=True),
            "requests_per_epoch_with_no_slash": break_even(replace(e, slash_bps=0), "requests_per_epoch",
                                                           1, 10**6, increasing=True),
        }
    return out


def plot(result: dict, economy: Economy, path: Path) -> None:
    plt = pyplot()
    curves = result["curves"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in ("0", "mid", "max"):
        rep = result["levels"][label]["reputation"]
        a.plot(curves["f"], curves[label], label=f"one epoch, reputation {rep}")
    a.plot(curves["long_f"], curves["long_run"], "k--", label="long run (stationary)")
    a.axhline(0, color="grey", lw=0.8)
    highest = max(max(curves[label]) for label in ("0", "mid", "max", "long_run"))
    a.set_ylim(top=max(2 * highest, economy.fee))  # room above zero only where cheating pays
    a.set_xscale("log")
    a.set_yscale("symlog", linthresh=economy.fee)
    a.set(xlabel="share of requests cheated f", ylabel="cheat - honest, tokens per epoch",
          title=f"expected gain from cheating (slash {economy.slash_bps / 100:g}%, d={economy.detection:g})")
    a.legend(fontsize=8)
    for label in ("0", "mid", "max"):
        rep = result["levels"][label]["reputation"]
        b.plot(curves["f"], curves["epochs_to_catch"][label], label=f"from reputation {rep}")
    b.set_xscale("log")
    b.set_yscale("log")
    b.set(xlabel="share of requests cheated f", ylabel="expected epochs until caught",
          title=f"time to first catch ({economy.requests_per_epoch} requests per epoch)")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(result: dict, economy: Economy, detection: dict, evens: dict) -> None:
    show("expected gain from cheating per epoch, tokens (cheat minus honest)",
         ["reputation", "validated", "honest profit", "f=0.01", "f=0.1", "f=1", "worst per cheat"],
         [[f"{lv['reputation']} ({label})", f"{lv['p_validate']:.0%}",
           *(f"{v:.4g}" for v in (lv["honest_profit"], lv["gain_at"]["0.01"], lv["gain_at"]["0.1"],
                                  lv["gain_at"]["1.0"], lv["max_gain_per_cheat"]))]
          for label, lv in result["levels"].items()])
    show(f"expected time until caught ({economy.requests_per_epoch} requests per epoch)",
         ["from reputation", "epochs f=0.01", "f=0.1", "f=1", "requests f=0.01", "f=0.1", "f=1"],
         [[f"{lv['reputation']} ({label})", *lv["epochs_to_catch"].values(), *lv["requests_to_catch"].values()]
          for label, lv in result["levels"].items()])
    lr = result["long_run"]
    console.print(f"long run: honest {lr['honest_profit']:.4g} tokens/epoch; cheating changes that by at "
                  f"most {lr['max_gain']:.4g} (at f={lr['max_gain_at_f']:.3g})")
    lower = detection.get("lower_95")
    console.print(f"detection d = {economy.detection:g} ({detection['attack']}, {detection['source']}"
                  + (f", n={detection['n']}, one-sided 95% lower bound {lower:.3f}" if lower else "") + ")")
    console.print(f"a false failed verdict costs its accuser {result['false_accusation_cost']:.4g} tokens "
                  "of stake once the jury finds the answer valid, and earns it nothing")
    console.print(f"catches until the stake falls below min_stake: {result['catches_to_eject']}; "
                  "expected epochs to that from reputation 0: "
                  + ", ".join(f"f={f}: {e:.1f}" for f, e in result["epochs_to_eject_from_0"].items()
                              if e is not None))
    for case, levers in evens.items():
        console.print(f"cheating would pay only below ({case.replace('_', ' ')}): "
                      + ", ".join(_edge(k, v) for k, v in levers.items()))
    console.print("[green]cheating is unprofitable for every f in (0, 1] at every reputation, in one "
                  f"epoch and in the long run: at best {result['worst_gain']:.4g} tokens per cheated request"
                  if result["worst_gain"] < 0 else
                  f"[red]cheating PAYS: up to {result['worst_gain']:.4g} tokens per cheated request")


def _edge(name: str, value: float | None) -> str:
    if value is None:
        return f"{name}: never pays"
    return f"{name}: pays everywhere" if math.isinf(value) else f"{name} = {value:.4g}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    economy, detection = economy_from(args)
    result = simulate(economy)
    evens = break_evens(economy)
    robust = worst_gain(replace(economy, detection=detection["lower_95"])) if detection.get("lower_95") else None
    report(result, economy, detection, evens)
    out = {"economy": asdict(economy), "assumptions": ASSUMED, "detection": detection,
           "cheating_pays": result["worst_gain"] > 0, "worst_gain_at_detection_lower_95": robust,
           "break_even": evens, **result}
    # strict JSON has no infinity: a lever under which cheating always pays is written as null
    # with its name listed under "pays_at_every_value"
    out["break_even"] = {case: {k: (None if v is not None and math.isinf(v) else v) for k, v in levers.items()}
                         for case, levers in evens.items()}
    out["pays_at_every_value"] = [f"{case}.{k}" for case, levers in evens.items()
                                  for k, v in levers.items() if v is not None and math.isinf(v)]
    write_json(args.name, out)
    plot(result, economy, RESULTS / f"{args.name}.png")
    console.print(f"wrote benchmarks/results/{args.name}.json and .png")
    return out


if __name__ == "__main__":
    main()
