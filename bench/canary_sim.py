"""Seeded simulations of canary analysis: power, false-rollback rate, latency regressions, shadow steps,
and requests to a rollback under each way of keeping alpha over repeated looks.

Synthetic traffic runs through the very `decide`/`apply` the controller uses, look by look:
requests split by the current step's percentage, errors drawn per request, latencies from a
log-normal binned into the stats histogram. `make bench` writes docs/canary-analysis.md.

    python bench/canary_sim.py [--runs 500]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bentos.controlplane.rollouts import RolloutPolicy, RolloutState, apply, decide  # noqa: E402
from bentos.dataplane.stats import KL_CLIP, LATENCY_EDGES_MS, Counts  # noqa: E402

EDGES = np.array(LATENCY_EDGES_MS, dtype=float)


@dataclass(frozen=True)
class Traffic:
    canary_error: float
    stable_error: float = 0.005
    canary_slowdown: float = 1.0  # multiplies every canary latency
    median_ms: float = 20.0
    sigma: float = 0.5
    rps: float = 50.0
    disagreement: float = 0.0  # share of the canary's answers that differ from stable's
    compare_sample: float = 0.2  # share of canary answers also asked of stable (SWITCHYARD_CANARY_COMPARE_SAMPLE)
    fails_after: int = 0  # canary requests served well before its errors start (a late regression)
    token_kl: float = 0.0  # language models: the canary's mean per-token KL from stable per comparison (nats)
    canary_cut: float = 0.0  # share of streams the endpoint's output guardrails cut: canary, stable
    stable_cut: float = 0.0


@dataclass(frozen=True)
class Outcome:
    action: str  # "promote" or "rollback"
    canary_requests: int  # canary requests seen when the decision fell
    seconds: float


def _add(counts: Counts, rng: np.random.Generator, n: int, error: float, median_ms: float,
         sigma: float, timed: bool = True) -> None:
    """n requests; untimed (shadow copies, as Endpoint._evidence records them) they count without latency.
    The latencies are drawn either way, so that every later draw of a seeded run is the same."""
    counts.requests += n
    counts.errors += int(rng.binomial(n, error))
    latencies = rng.lognormal(np.log(median_ms), sigma, n)
    if not timed:
        return
    hist = np.bincount(np.searchsorted(EDGES, latencies, side="left"), minlength=len(EDGES) + 1)
    counts.latency = [a + int(b) for a, b in zip(counts.latency, hist, strict=True)]


def _score(counts: Counts, rng: np.random.Generator, n: int, mean_kl: float) -> None:
    """n token-level comparisons: KL per comparison from a gamma of shape 2 around the mean (a few prompts
    diverge much more than most), clipped as the recorder clips it."""
    kl = np.minimum(rng.gamma(2.0, mean_kl / 2, n), KL_CLIP) if mean_kl > 0 else np.zeros(n)
    counts.scored += n
    counts.kl_sum += float(kl.sum())


def simulate(policy: RolloutPolicy, traffic: Traffic, seed: int, max_looks: int = 10_000) -> Outcome:
    rng = np.random.default_rng(seed)
    kl_rng = np.random.default_rng([seed, 1])  # its own stream: the other checks' seeded runs stay as they were
    now = 0.0
    state = RolloutState(endpoint="sim", canary="c", stable="s", policy=policy, started_at=now, step_started_at=now)
    canary, stable = Counts(), Counts()
    for _ in range(max_looks):
        total = int(rng.poisson(traffic.rps * policy.interval_s))
        shadow = state.percent == 0  # the shadow step: the canary answers a copy of every request
        n_canary = total if shadow else int(rng.binomial(total, state.percent / 100))
        error = traffic.canary_error if canary.requests >= traffic.fails_after else traffic.stable_error
        _add(canary, rng, n_canary, error, traffic.median_ms * traffic.canary_slowdown, traffic.sigma,
             timed=not shadow)
        _add(stable, rng, total if shadow else total - n_canary, traffic.stable_error, traffic.median_ms,
             traffic.sigma)
        compared = n_canary if shadow else int(rng.binomial(n_canary, traffic.compare_sample))
        canary.comparisons += compared
        canary.agreement_sum += compared - int(rng.binomial(compared, traffic.disagreement))
        if "divergence" in policy.checks:
            _score(canary, kl_rng, compared, traffic.token_kl)
        if "violations" in policy.checks:
            for counts, n, share in ((canary, n_canary, traffic.canary_cut),
                                     (stable, total if shadow else total - n_canary, traffic.stable_cut)):
                counts.guarded += n
                counts.cut += int(kl_rng.binomial(n, share))
        now += policy.interval_s
        decision = decide(state, canary, stable, now)
        apply(state, decision, canary.requests, now)
        if decision.action in ("promote", "rollback"):
            return Outcome(decision.action, canary.requests, now)
    raise RuntimeError("no decision: raise max_looks")


def outliving(policy: RolloutPolicy, traffic: Traffic, times: float = 10.0) -> RolloutPolicy:
    """The policy with min_seconds set so the canary sees `times` its planned requests before promotion."""
    canary_rps = sum(traffic.rps * p / 100 for p in policy.steps[:-1])
    seconds = times * policy.planned_requests() / canary_rps
    return policy.model_copy(update={"min_seconds": seconds})


def run_many(policy: RolloutPolicy, traffic: Traffic, runs: int, seed0: int = 0) -> list[Outcome]:
    return [simulate(policy, traffic, seed0 + i) for i in range(runs)]


def binomial_tolerance(alpha: float, runs: int, sigmas: float = 3.0) -> float:
    """How far an observed rate may sit above alpha by chance: 3 standard errors."""
    return float(sigmas * np.sqrt(alpha * (1 - alpha) / runs))


def _rollbacks(outcomes: list[Outcome]) -> str:
    need = sorted(o.canary_requests for o in outcomes if o.action == "rollback")
    if not need:
        return "-"
    return f"{need[len(need) // 2]} / {need[math.ceil(len(need) * 0.99) - 1]} / {need[-1]}"


def _row(name: str, outcomes: list[Outcome]) -> str:
    rolled = sum(o.action == "rollback" for o in outcomes)
    return f"| {name} | {len(outcomes)} | {rolled} | {len(outcomes) - rolled} | {_rollbacks(outcomes)} |"


def report(runs: int) -> str:
    policy = RolloutPolicy(min_seconds=0)
    same_traffic = Traffic(canary_error=0.005)
    same = run_many(policy, same_traffic, runs, seed0=10_000)
    long_same = run_many(outliving(RolloutPolicy(), same_traffic), same_traffic, runs, seed0=20_000)
    shadow = RolloutPolicy(steps=[0, 25, 50, 100], checks=["errors", "latency", "agreement"], min_seconds=0)
    lm = policy.model_copy(update={"checks": ["errors", "latency", "divergence"]})
    at_null = Traffic(canary_error=0.005, token_kl=lm.max_token_kl)
    lm_null = run_many(outliving(lm, at_null), at_null, runs, seed0=62_000)
    lines = [
        "# Canary analysis: simulated power, false-rollback rate and requests to a rollback\n",
        "Made by `python bench/canary_sim.py`: seeded synthetic traffic (50 req/s, log-normal latency, median",
        "20 ms) through the controller's own `decide`, look by look, with the default policy "
        f"(`{policy.model_dump_json()}`; `min_seconds` 0 so time does not matter) unless a row says otherwise.",
        "Stable has 0.5 % errors throughout.\n",
        "## How a look decides\n",
        "Each look tests the cumulative counts since the rollout began (`bentos/controlplane/canary_analysis.py`).",
        "Errors: a one-sided two-proportion z-test (Fisher's exact test while errors are few) that the canary's",
        "error ratio exceeds stable's by more than `error_margin`. Latency: a one-sided Mann-Whitney U test on the",
        "latency histograms, plus the canary's p95 exceeding stable's by `latency_ratio`; only answers users got are",
        "timed (a shadow copy waits for spare capacity, so its requests and errors count but its time does not, and a",
        "shadow step judges no latency). Agreement (in a shadow",
        "step): the mean label match or cosine over at least 50 comparisons must reach `min_agreement`.",
        "Divergence (language models): each sampled canary answer's tokens are scored by both versions,",
        "teacher-forced, and the mean per-token KL (clipped to 5 nats) is tested against `max_token_kl` with a",
        "one-sided normal-mixture supermartingale for a bounded mean (Robbins 1970; Howard, Ramdas, McAuliffe",
        "and Sekhon 2021): exact, valid at every look, no alpha spending. The rows simulate 20 % of canary",
        "answers compared, each comparison's KL drawn from a gamma of shape 2 around the row's mean.",
        "Violations (endpoints with output guardrails): the share of split-routed streams the guardrails cut,",
        "tested against stable's plus `violation_margin` exactly as errors are.",
        "Repeated looks keep the false-rollback chance within `alpha` (split evenly between the tested checks)",
        "in two ways, each given half of a check's alpha (`policy.sequential`: `both`):\n",
        "- **O'Brien-Fleming alpha spending** (Lan and DeMets 1983; O'Brien and Fleming 1979): each look spends",
        "  the increment of alpha(t) = 2 - 2 Phi(z / sqrt(t)), t the fraction of the planned canary requests",
        "  (`min_requests` x analysed steps) seen. Most power inside the plan; once t reaches 1 nothing is left,",
        "  so a canary held past its plan (by `min_seconds`, or a pause) could not be rolled back.",
        "- **A mixture sequential probability ratio test** (mSPRT; Robbins 1970; Johari, Koomen, Pekelis and",
        "  Walsh 2017): on the error-ratio difference, and on the share of canary requests slower than",
        "  `latency_ratio` x stable's p95 (against 5 %: the policy's own latency criterion), each approximately",
        "  N(theta, V), with a N(null, tau^2) mixture over the alternative (tau 0.02 for errors, 0.05 for",
        "  latency), Lambda = sqrt(V / (V + tau^2)) exp(tau^2 (est - null)^2 / (2 V (V + tau^2))). Under",
        "  the null Lambda is a non-negative martingale of mean 1, so by Ville's inequality (Ville 1939) it reaches",
        "  1 / alpha with probability at most alpha, however many looks and however long the canary runs.",
        "  The normal approximation with a plug-in variance makes this asymptotic: the rows below measure it.\n",
        "Promotion still needs every step's minimums with no check rejecting; the union bound keeps the two",
        "methods together within alpha.\n",
        "References: K. K. G. Lan and D. L. DeMets, Discrete sequential boundaries for clinical trials, Biometrika",
        "70(3), 1983. P. C. O'Brien and T. R. Fleming, A multiple testing procedure for clinical trials,",
        "Biometrics 35(3), 1979. H. Robbins, Statistical methods related to the law of the iterated logarithm,",
        "Ann. Math. Statist. 41(5), 1970. R. Johari, P. Koomen, L. Pekelis and D. Walsh, Peeking at A/B tests:",
        "why it matters, and what to do about it, KDD 2017. J. Ville, Etude critique de la notion de collectif,",
        "1939. S. R. Howard, A. Ramdas, J. McAuliffe and J. Sekhon, Time-uniform, nonparametric, nonasymptotic",
        "confidence sequences, Ann. Statist. 49(2), 2021.\n",
        "## Outcomes\n",
        "| scenario | runs | rolled back | promoted | canary requests at rollback (median / p99 / max) |",
        "|---|---|---|---|---|",
        _row("canary 5 % errors", run_many(policy, Traffic(canary_error=0.05), 200)),
        _row("equal canary (0.5 % errors, same latency)", same),
        _row("equal canary, held 10x its plan (looks every interval)", long_same),
        _row("canary 2x slower (every request)", run_many(policy, Traffic(canary_error=0.005, canary_slowdown=2.0),
                                                          200)),
        _row("canary 1.2x slower, held 10x its plan (within the 1.5x latency ratio)",
             run_many(outliving(RolloutPolicy(), same_traffic), Traffic(canary_error=0.005, canary_slowdown=1.2), 200,
                      seed0=50_000)),
        _row("shadow step first, canary disagreeing on 10 % of answers",
             run_many(shadow, Traffic(canary_error=0.005, disagreement=0.10), 200)),
        _row("no shadow step, canary disagreeing on 10 % (20 % of its answers compared)",
             run_many(policy.model_copy(update={"checks": ["errors", "latency", "agreement"]}),
                      Traffic(canary_error=0.005, disagreement=0.10), 200)),
        _row("shadow step first, good canary", run_many(shadow, same_traffic, 200, seed0=40_000)),
        _row("shadow step first, canary 5 % errors", run_many(shadow, Traffic(canary_error=0.05), 200)),
        _row("language model, divergence check: canary 4 nats/token from stable (trained on other text)",
             run_many(lm, Traffic(canary_error=0.005, token_kl=4.0), 200, seed0=60_000)),
        _row("language model, divergence check: canary 0.02 nats/token (an int8 copy)",
             run_many(lm, Traffic(canary_error=0.005, token_kl=0.02), 200, seed0=61_000)),
        _row(f"language model, divergence check: canary at the tolerated {lm.max_token_kl} nats/token, held 10x",
             lm_null),
        _row("language model, violations check: guardrails cut 5 % of the canary's streams, 0.5 % of stable's",
             run_many(policy.model_copy(update={"checks": ["errors", "latency", "violations"]}),
                      Traffic(canary_error=0.005, canary_cut=0.05, stable_cut=0.005), 200, seed0=63_000)),
        "",
        f"False-rollback rate {sum(o.action == 'rollback' for o in same) / len(same):.3f} "
        f"(held 10x: {sum(o.action == 'rollback' for o in long_same) / len(long_same):.3f}) against alpha "
        f"{policy.alpha}; binomial tolerance over {runs} runs, 3 standard errors: "
        f"{binomial_tolerance(policy.alpha, runs):.3f}. Divergence check at the tolerated mean, held 10x: "
        f"{sum(o.action == 'rollback' for o in lm_null) / len(lm_null):.3f} (the test is exact, so this sits well "
        "below alpha).\n",
        "## Requests to a rollback, by method (`policy.sequential`)\n",
        "O'Brien-Fleming spends alpha over the planned requests (`min_requests` x analysed steps); the mSPRT",
        "is valid at any number of looks. `both` (the default) gives each half of the alpha. A late regression:",
        "the canary serves 1,800 requests (3x its plan) well, then fails 5 % of requests, while `min_seconds`",
        "holds it for 10x its plan.\n",
        "| method | canary 5 % errors: rolled back / runs | requests at rollback (median / p99 / max) "
        "| late regression: rolled back after it began / runs (false alarms before) "
        "| requests at rollback (median / p99 / max) |",
        "|---|---|---|---|---|",
    ]
    for method in ("obrien-fleming", "msprt", "both"):
        bad = run_many(RolloutPolicy(min_seconds=0, sequential=method), Traffic(canary_error=0.05), 200)
        late_policy = outliving(RolloutPolicy(sequential=method), same_traffic)
        late = run_many(late_policy, Traffic(canary_error=0.05, fails_after=1800), 100, seed0=30_000)
        caught = [o for o in late if o.action == "rollback" and o.canary_requests > 1800]
        early = sum(o.action == "rollback" for o in late) - len(caught)
        lines.append(f"| {method} | {sum(o.action == 'rollback' for o in bad)} / {len(bad)} | {_rollbacks(bad)} "
                     f"| {len(caught)} / {len(late)} ({early}) | {_rollbacks(caught)} |")
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
