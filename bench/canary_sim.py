"""Seeded simulations of canary analysis: power, false-rollback rate, latency regressions.

Synthetic traffic runs through the very `decide`/`apply` the controller uses, look by look:
requests split by the current step's percentage, errors drawn per request, latencies from a
log-normal binned into the stats histogram. `make bench` writes docs/canary-analysis.md.

    python bench/canary_sim.py [--runs 500]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bentos.controlplane.rollouts import RolloutPolicy, RolloutState, apply, decide  # noqa: E402
from bentos.dataplane.stats import LATENCY_EDGES_MS, Counts  # noqa: E402

EDGES = np.array(LATENCY_EDGES_MS, dtype=float)


@dataclass(frozen=True)
class Traffic:
    canary_error: float
    stable_error: float = 0.005
    canary_slowdown: float = 1.0  # multiplies every canary latency
    median_ms: float = 20.0
    sigma: float = 0.5
    rps: float = 50.0


@dataclass(frozen=True)
class Outcome:
    action: str  # "promote" or "rollback"
    canary_requests: int  # canary requests seen when the decision fell
    seconds: float


def _add(counts: Counts, rng: np.random.Generator, n: int, error: float, median_ms: float,
         sigma: float) -> None:
    counts.requests += n
    counts.errors += int(rng.binomial(n, error))
    latencies = rng.lognormal(np.log(median_ms), sigma, n)
    hist = np.bincount(np.searchsorted(EDGES, latencies, side="left"), minlength=len(EDGES) + 1)
    counts.latency = [a + int(b) for a, b in zip(counts.latency, hist, strict=True)]


def simulate(policy: RolloutPolicy, traffic: Traffic, seed: int, max_looks: int = 10_000) -> Outcome:
    rng = np.random.default_rng(seed)
    now = 0.0
    state = RolloutState(endpoint="sim", canary="c", stable="s", policy=policy, started_at=now, step_started_at=now)
    canary, stable = Counts(), Counts()
    for _ in range(max_looks):
        total = int(rng.poisson(traffic.rps * policy.interval_s))
        n_canary = int(rng.binomial(total, state.percent / 100))
        _add(canary, rng, n_canary, traffic.canary_error, traffic.median_ms * traffic.canary_slowdown, traffic.sigma)
        _add(stable, rng, total - n_canary, traffic.stable_error, traffic.median_ms, traffic.sigma)
        now += policy.interval_s
        decision = decide(state, canary, stable, now)
        apply(state, decision, canary.requests, now)
        if decision.action in ("promote", "rollback"):
            return Outcome(decision.action, canary.requests, now)
    raise RuntimeError("no decision: raise max_looks")


def run_many(policy: RolloutPolicy, traffic: Traffic, runs: int, seed0: int = 0) -> list[Outcome]:
    return [simulate(policy, traffic, seed0 + i) for i in range(runs)]


def binomial_tolerance(alpha: float, runs: int, sigmas: float = 3.0) -> float:
    """How far an observed rate may sit above alpha by chance: 3 standard errors."""
    return float(sigmas * np.sqrt(alpha * (1 - alpha) / runs))


def report(runs: int) -> str:
    policy = RolloutPolicy(min_seconds=0)
    bad = run_many(policy, Traffic(canary_error=0.05), 200)
    same = run_many(policy, Traffic(canary_error=0.005), runs)
    slow = run_many(policy, Traffic(canary_error=0.005, canary_slowdown=2.0), 200)
    rolled = [o for o in bad if o.action == "rollback"]
    false_rate = sum(o.action == "rollback" for o in same) / len(same)
    need = sorted(o.canary_requests for o in rolled)
    lines = [
        "# Canary analysis: simulated power and false-rollback rate\n",
        "Made by `python bench/canary_sim.py`: seeded synthetic traffic (50 req/s, log-normal latency, median",
        "20 ms) through the controller's own `decide`, with the default policy "
        f"(`{policy.model_dump_json()}`; `min_seconds` 0 so time does not matter).\n",
        "| scenario | runs | rolled back | promoted | canary requests at rollback (median / p99 / max) |",
        "|---|---|---|---|---|",
        f"| canary 5 % errors vs stable 0.5 % | {len(bad)} | {len(rolled)} | {len(bad) - len(rolled)} | "
        f"{need[len(need) // 2]} / {need[int(len(need) * 0.99) - 1]} / {need[-1]} |",
        f"| equal canary (0.5 % errors, same latency) | {len(same)} | {round(false_rate * len(same))} | "
        f"{len(same) - round(false_rate * len(same))} | - |",
        f"| canary 2x slower (every request) | {len(slow)} | {sum(o.action == 'rollback' for o in slow)} | "
        f"{sum(o.action == 'promote' for o in slow)} | - |",
        "",
        f"False-rollback rate {false_rate:.3f} against alpha {policy.alpha} "
        f"(binomial tolerance over {len(same)} runs, 3 standard errors: "
        f"{binomial_tolerance(policy.alpha, len(same)):.3f}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "canary-analysis.md")
    args = parser.parse_args()
    text = report(args.runs)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
