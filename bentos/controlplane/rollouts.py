"""Progressive delivery: the rollout policy, its state, and the pure decision at each look.

A rollout moves a canary through the policy's traffic steps (e.g. 5 -> 25 -> 50 -> 100 %).
At every analysis interval the controller hands `decide` the cumulative counts of the
canary and of stable since the rollout began; `decide` answers hold, advance, rollback or
promote, with the evidence. The statistics are in `bentos.controlplane.canary_analysis`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bentos.controlplane.canary_analysis import (
    divergence_test,
    error_msprt,
    error_test,
    latency_msprt,
    latency_test,
    obrien_fleming_spent,
)
from bentos.dataplane.drift import psi
from bentos.dataplane.stats import KL_CLIP, Counts, add_counts, quantile
from bentos.schemas import TAG_PATTERN

Check = Literal["errors", "latency", "agreement", "drift", "divergence", "violations"]
TESTED: tuple[Check, ...] = ("errors", "latency", "divergence", "violations")  # hypothesis tests that share alpha
MIN_COMPARISONS = 50  # comparisons with stable (shadow step, or sampled canary answers) before agreement judges
# Where the divergence test is sharpest, in comparisons: a model trained on other text (4 nats per token) is
# then rolled back after about 10 of them; centring it on MIN_COMPARISONS would take about 15.
DIVERGENCE_PLAN = 20
Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
Action = Literal["hold", "advance", "rollback", "promote"]
Sequential = Literal["both", "obrien-fleming", "msprt"]
HISTORY_LIMIT = 300


class RolloutPolicy(BaseModel):
    """How a canary earns its traffic. Defaults suit a service with a few requests per second."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] = Field([5, 25, 50, 100], min_length=2, max_length=20,
                             description="Canary traffic per step in %, increasing, ending at 100 (= promote); "
                                         "a first step of 0 runs the canary as a shadow (mirrored, never answers).")
    min_requests: int = Field(200, ge=1, le=10_000_000, description="Canary requests before a step may advance.")
    min_seconds: float = Field(30.0, ge=0, le=86_400, description="Seconds before a step may advance.")
    interval_s: float = Field(5.0, ge=0.2, le=600, description="Seconds between analyses.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="False-rollback budget for the whole rollout.")
    checks: list[Check] = Field(["errors", "latency"], min_length=1, description="Tests to run at each look.")
    error_margin: float = Field(0.01, ge=0, le=1, description="Canary error ratio may exceed stable's by this.")
    latency_quantile: float = Field(0.95, gt=0.5, lt=1, description="The latency quantile compared (0.95 = p95).")
    latency_ratio: float = Field(1.5, ge=1, le=100, description="Canary quantile may be this many times stable's.")
    min_agreement: float = Field(0.95, ge=0, le=1, description="Mean agreement with stable (label match or cosine) "
                                 "the canary must keep: compared on every request in a shadow step, on a sample "
                                 "(SWITCHYARD_CANARY_COMPARE_SAMPLE) in canary steps.")
    max_prediction_drift: float = Field(0.2, gt=0, le=10, description=(
        "drift check: the largest PSI allowed between the canary's predicted-class mix and stable's on the same "
        "(split-routed) traffic; classifiers only."))
    violation_margin: float = Field(0.01, ge=0, le=1, description=(
        "violations check (endpoints with output guardrails): the share of the canary's streams that its "
        "guardrails cut may exceed stable's by this much; tested like errors."))
    max_token_kl: float = Field(0.25, gt=0, le=KL_CLIP / 2, description=(
        "divergence check (language models): the mean per-token KL divergence, in nats, tolerated between the "
        "canary's next-token distributions and stable's on the canary's own text (both scored teacher-forced "
        "on a sample of its requests, or every shadow request). A sequential test that is valid at every look "
        "rolls back once the mean is shown to be above it."))
    sequential: Sequential = Field("both", description="How repeated looks keep alpha: 'obrien-fleming' (most "
                                   "power within the plan of min_requests per step, none after it), 'msprt' "
                                   "(valid however long the canary runs), or 'both' (half of alpha each).")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if any(not 1 <= s <= 100 for s in steps[1:]) or not 0 <= steps[0] <= 100:
            raise ValueError(f"each step must be a percentage from 1 to 100 (the first may be 0), got {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase, got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"the last step must be 100 (promotion), got {steps[-1]}")
        return steps

    @field_validator("checks")
    @classmethod
    def _checks(cls, checks: list[Check]) -> list[Check]:
        if len(set(checks)) != len(checks):
            raise ValueError(f"checks must not repeat, got {checks}")
        return checks

    def planned_requests(self) -> int:
        """Canary requests the analysed steps (all but the last) plan for: information fraction 1."""
        return self.min_requests * (len(self.steps) - 1)


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(min_length=1, max_length=200, pattern=TAG_PATTERN,
                     description="The canary: a full tag, model name or variant.")
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy)
    reason: str = Field(min_length=1, max_length=1000, description="Why; recorded in the audit log.")


class RolloutState(BaseModel):
    endpoint: str
    canary: str
    stable: str
    policy: RolloutPolicy
    status: Status = "running"
    step: int = 0  # index into policy.steps
    started_at: float
    step_started_at: float
    step_start_requests: int = 0  # canary requests (cumulative) when the step began
    spent: dict[str, float] = Field(default_factory=dict)  # alpha spent so far, per check
    looks: int = 0
    last_look_at: float = 0.0
    history: list[dict[str, Any]] = Field(default_factory=list)
    updated_at: float = Field(default_factory=time.time)
    version: int = 0  # set by the store on every write; each write compares against the version it read

    @property
    def percent(self) -> int:
        return self.policy.steps[self.step]

    def remember(self, entry: dict[str, Any]) -> None:
        self.history = [*self.history, entry][-HISTORY_LIMIT:]


def summary(counts: Counts, q: float) -> dict[str, Any]:
    return {"requests": counts.requests, "errors": counts.errors,
            "error_ratio": round(counts.errors / counts.requests, 6) if counts.requests else None,
            f"p{round(q * 100)}_ms": quantile(counts.latency, q)}


@dataclass
class Decision:
    action: Action
    reason: str
    evidence: dict[str, Any]


def analyze(state: RolloutState, canary: Counts, stable: Counts) -> dict[str, dict[str, Any]]:
    """Run each check on the cumulative data, spending this look's share of alpha. Updates state.spent."""
    policy = state.policy
    tested = [c for c in policy.checks if c in TESTED]
    alpha = policy.alpha / max(1, len(tested))
    t = canary.requests / policy.planned_requests()
    results: dict[str, dict[str, Any]] = {}
    if "agreement" in policy.checks:
        results["agreement"] = agreement_check(canary, policy.min_agreement)
    if "drift" in policy.checks:
        results["drift"] = drift_check(canary, stable, policy.max_prediction_drift)
    if "divergence" in policy.checks:  # anytime-valid by construction: its alpha share is not spent per look
        results["divergence"] = divergence_check(canary, policy.max_token_kl, alpha)
    obf_alpha = {"both": alpha / 2, "obrien-fleming": alpha, "msprt": 0.0}[policy.sequential]
    seq_alpha = alpha - obf_alpha
    for check in (c for c in tested if c != "divergence"):
        if check == "latency" and state.percent == 0:
            # Shadow answers run in the background, after the primary and when there is room: their
            # latency is not what users would see, so latency is judged from the first canary step.
            results[check] = {"test": "none", "reject": False, "note": "not judged in a shadow step"}
            continue
        spent = obrien_fleming_spent(obf_alpha, t) if obf_alpha else 0.0
        look_alpha = max(0.0, spent - state.spent.get(check, 0.0))
        state.spent[check] = max(spent, state.spent.get(check, 0.0))
        if canary.requests == 0 or stable.requests == 0:
            results[check] = {"test": "none", "reject": False, "note": "no traffic on one side yet"}
            continue
        if check in ("errors", "violations"):
            # A cut stream is to the violations check what a failed request is to the errors check.
            c_bad, c_n, s_bad, s_n, margin = (
                (canary.errors, canary.requests, stable.errors, stable.requests, policy.error_margin)
                if check == "errors" else
                (canary.cut, canary.guarded, stable.cut, stable.guarded, policy.violation_margin))
            if c_n == 0 or s_n == 0:
                results[check] = {"test": "none", "reject": False, "note": "no guarded streams on one side yet"}
                continue
            fixed = error_test(c_bad, c_n, s_bad, s_n, margin, look_alpha).as_dict()
            seq = error_msprt(c_bad, c_n, s_bad, s_n, margin, seq_alpha)
            seq_reject = seq.reject
        else:
            fixed = latency_test(canary.latency, stable.latency, policy.latency_quantile, policy.latency_ratio,
                                 look_alpha).as_dict()
            seq = latency_msprt(canary.latency, stable.latency, policy.latency_quantile, policy.latency_ratio,
                                seq_alpha)
            seq_reject = seq.reject and fixed["effect"] > policy.latency_ratio
        fixed["reject"] = bool(look_alpha and fixed["reject"])
        results[check] = {**fixed, "reject": fixed["reject"] or (seq_alpha > 0 and seq_reject),
                          "sequential": {**seq.as_dict(), "reject": seq_alpha > 0 and seq_reject}}
    return results


def agreement_check(canary: Counts, threshold: float) -> dict[str, Any]:
    """A threshold, not a test: the mean agreement over enough comparisons must reach it."""
    n = canary.comparisons
    mean = canary.agreement_sum / n if n else None
    enough = n >= MIN_COMPARISONS
    return {"test": "threshold", "comparisons": n, "min_comparisons": MIN_COMPARISONS,
            "effect": None if mean is None else float(f"{mean:.6g}"), "threshold": threshold,
            "reject": bool(enough and mean is not None and mean < threshold),
            "waiting": None if enough else f"agreement: {n}/{MIN_COMPARISONS} comparisons"}


def divergence_check(canary: Counts, tolerated: float, alpha: float) -> dict[str, Any]:
    """The canary's mean per-token KL from stable against the tolerated divergence. A rollback needs the
    test (valid at any look, so it may act before MIN_COMPARISONS); a promotion needs MIN_COMPARISONS."""
    n = canary.scored
    seq = divergence_test(n, canary.kl_sum, tolerated, KL_CLIP, alpha, DIVERGENCE_PLAN)
    enough = n >= MIN_COMPARISONS
    return {"test": seq.test, "comparisons": n, "min_comparisons": MIN_COMPARISONS,
            "effect": float(f"{canary.kl_sum / n:.6g}") if n else None, "threshold": tolerated,
            "log_prob_ratio": float(f"{canary.log_ratio_sum / n:.6g}") if n else None,
            "p_value": float(f"{seq.p_value:.6g}"), "alpha": float(f"{alpha:.6g}"), "reject": seq.reject,
            "waiting": None if enough or seq.reject else f"divergence: {n}/{MIN_COMPARISONS} token-level comparisons"}


def drift_check(canary: Counts, stable: Counts, threshold: float) -> dict[str, Any]:
    """A threshold on the PSI between the two versions' predicted-class mixes, once each side has
    MIN_COMPARISONS predictions: a canary can be right as often as stable and still answer differently."""
    n_canary, n_stable = sum(canary.classes), sum(stable.classes)
    enough = n_canary >= MIN_COMPARISONS and n_stable >= MIN_COMPARISONS
    size = max(len(canary.classes), len(stable.classes))
    effect = None
    if enough and size:
        pad = [0] * size
        live = np.array(add_counts(canary.classes, pad), float)
        ref = np.array(add_counts(stable.classes, pad), float)
        effect = psi(live, ref / ref.sum())
    return {"test": "threshold", "predictions": [n_canary, n_stable], "min_predictions": MIN_COMPARISONS,
            "effect": None if effect is None else float(f"{effect:.6g}"), "threshold": threshold,
            "reject": bool(effect is not None and effect > threshold),
            "waiting": None if enough else f"drift: {n_canary}/{MIN_COMPARISONS} canary and {n_stable}/"
                                           f"{MIN_COMPARISONS} stable predictions"}


def decide(state: RolloutState, canary: Counts, stable: Counts, now: float) -> Decision:
    """One look: the checks on everything seen so far, then the step's minimums."""
    policy = state.policy
    results = analyze(state, canary, stable)
    state.looks += 1
    state.last_look_at = now
    in_step = canary.requests - state.step_start_requests
    evidence = {
        "look": state.looks, "step": state.percent, "at": now,
        "information_fraction": round(min(1.0, canary.requests / policy.planned_requests()), 4),
        "canary": summary(canary, policy.latency_quantile), "stable": summary(stable, policy.latency_quantile),
        "checks": results,
        "step_progress": {"requests": in_step, "min_requests": policy.min_requests,
                          "seconds": round(now - state.step_started_at, 1), "min_seconds": policy.min_seconds},
    }
    failed = [name for name, r in results.items() if r["reject"]]
    if failed:
        return Decision("rollback", f"failed {', '.join(failed)} at {state.percent} %", evidence)
    # A check the policy asks for that has not seen enough yet holds the step: without its evidence a
    # canary must not move on (it once was promoted when its comparisons were dropped on a busy stable).
    waiting = [r["waiting"] for r in results.values() if r.get("waiting")]
    if waiting:
        return Decision("hold", f"step {state.percent} %: waiting for {'; '.join(waiting)}", evidence)
    if in_step < policy.min_requests or now - state.step_started_at < policy.min_seconds:
        return Decision("hold", f"step {state.percent} %: {in_step}/{policy.min_requests} requests, "
                                f"{now - state.step_started_at:.0f}/{policy.min_seconds:.0f} s", evidence)
    following = policy.steps[state.step + 1]
    if following == 100:
        return Decision("promote", f"passed every check through {state.percent} %", evidence)
    return Decision("advance", f"passed {state.percent} %, moving to {following} %", evidence)


def apply(state: RolloutState, decision: Decision, canary_requests: int, now: float) -> None:
    """Move the state along after the controller has changed the deployment."""
    if decision.action == "advance":
        state.step += 1
        state.step_started_at, state.step_start_requests = now, canary_requests
    elif decision.action == "promote":
        state.step = len(state.policy.steps) - 1
        state.status = "promoted"
    elif decision.action == "rollback":
        state.status = "rolled_back"
    state.updated_at = now
    entry = {"action": decision.action, "reason": decision.reason, **decision.evidence}
    if decision.action != "hold" or not state.history or state.history[-1]["action"] != "hold":
        state.remember(entry)
    else:  # consecutive holds: keep the latest only, so history stays readable
        state.history = [*state.history[:-1], entry]
