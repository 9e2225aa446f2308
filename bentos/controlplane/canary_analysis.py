"""The statistics of canary analysis: pure functions, no I/O, numpy-free.

- errors: a one-sided test that the canary's error ratio exceeds stable's by more than a
  margin. A z-test with unpooled variance (H0: p_c - p_s <= margin); Fisher's exact test
  (H0: p_c <= p_s) when an expected error count is below 5, where the normal approximation
  fails. Either way a rollback also needs the observed difference to exceed the margin.
- latency: a one-sided Mann-Whitney U test on the latency histograms (every request in a
  bucket ties with the others there; the variance has the tie correction), that canary
  latencies are stochastically larger than stable's. A rollback also needs the canary's
  chosen quantile to exceed stable's by more than the policy's ratio.
- repeated looks, two ways, each with half of a check's alpha:
  - O'Brien-Fleming: each look may spend only the increment of a Lan-DeMets alpha-spending
    function, alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), where t is the fraction of the planned
    canary requests seen so far. Powerful within its plan, but once t reaches 1 its alpha is
    spent: a canary that outlives the plan (held by min_seconds, say) could never be rolled back.
  - a mixture sequential probability ratio test (mSPRT; Robbins 1970, Johari et al. 2017) on the
    error-ratio difference, and on the share of canary requests slower than latency_ratio x stable's
    quantile (against 1 - quantile): with the estimate approximately N(theta, V) and a N(null, tau^2) mixture over
    the alternative, Lambda = sqrt(V / (V + tau^2)) exp(tau^2 (est - null)^2 / (2 V (V + tau^2))).
    Under the null Lambda is (asymptotically) a non-negative martingale of mean 1, so by Ville's
    inequality P(Lambda ever reaches 1/alpha) <= alpha: valid at every look, however many, however
    long the canary runs, with looks chosen by the data.
  By the union bound the two together keep a check's false-rollback chance within its alpha
  (split evenly between the checks).
- divergence (language models): a one-sided test that the mean per-token KL of the canary's text from
  stable's exceeds the policy's tolerated divergence. Each comparison's KL is clipped to [0, B], so it is
  (B/2)-sub-Gaussian (Hoeffding's lemma), and the test needs only the count and the sum, which is all the
  shared store keeps. A one-sided normal-mixture supermartingale (Robbins 1970; Howard et al. 2021) over
  the sum's excess is exact, not asymptotic: valid at any look, with no alpha spending.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bentos.dataplane.stats import LATENCY_EDGES_MS, quantile


def norm_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def norm_ppf(p: float) -> float:
    """Inverse of norm_cdf by bisection (accurate to 1e-10; called a few times per look)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if norm_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def obrien_fleming_spent(alpha: float, t: float) -> float:
    """Alpha spent by information fraction t in (0, 1]."""
    if t <= 0:
        return 0.0
    t = min(1.0, t)
    return 2.0 - 2.0 * norm_cdf(norm_ppf(1 - alpha / 2) / math.sqrt(t))


@dataclass
class TestResult:
    test: str
    statistic: float
    p_value: float
    alpha: float  # this look's share of alpha
    effect: float  # error-ratio difference, or latency quantile ratio
    threshold: float  # the margin or ratio the effect must pass
    reject: bool

    def as_dict(self) -> dict[str, Any]:
        # Six significant digits: early looks spend alpha in the 1e-9 range.
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(c_err: int, c_n: int, s_err: int, s_n: int) -> float:
    """One-sided Fisher exact p-value: P(canary errors >= observed) given the error total."""
    total, errors = c_n + s_n, c_err + s_err
    lo, hi = max(0, errors - s_n), min(errors, c_n)
    denom = _log_comb(total, c_n)
    return min(1.0, sum(math.exp(_log_comb(errors, k) + _log_comb(total - errors, c_n - k) - denom)
                        for k in range(max(c_err, lo), hi + 1)))


def error_test(c_err: int, c_n: int, s_err: int, s_n: int, margin: float, alpha: float) -> TestResult:
    pc, ps = c_err / c_n, s_err / s_n
    diff = pc - ps
    pooled = (c_err + s_err) / (c_n + s_n)
    if min(c_n, s_n) * pooled < 5:  # too few errors for the normal approximation
        p = fisher_greater(c_err, c_n, s_err, s_n)
        return TestResult("fisher-exact", float(c_err), p, alpha, diff, margin, p < alpha and diff > margin)
    se = math.sqrt(pc * (1 - pc) / c_n + ps * (1 - ps) / s_n) or 1e-12
    z = (diff - margin) / se
    p = 1 - norm_cdf(z)
    return TestResult("two-proportion-z", z, p, alpha, diff, margin, p < alpha and diff > margin)


# Mixture scales: the size of effect each sequential test is most sensitive to. An error-ratio
# difference of a few points; for latency, how far P(canary slower than stable) sits from 1/2.
MSPRT_TAU = {"errors": 0.02, "latency": 0.05}


@dataclass
class SequentialResult:
    test: str
    likelihood_ratio: float
    p_value: float  # the always-valid p-value at this look: min(1, 1 / Lambda)
    alpha: float
    reject: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def msprt(estimate: float, null: float, variance: float, tau: float, alpha: float) -> SequentialResult:
    """Normal-mixture SPRT of H0: theta <= null against theta > null, from an estimate and its variance."""
    if variance <= 0 or estimate <= null or alpha <= 0:
        return SequentialResult("msprt", 1.0, 1.0, alpha, False)
    t2 = tau * tau
    log_lr = 0.5 * math.log(variance / (variance + t2)) + t2 * (estimate - null) ** 2 / (2 * variance * (variance + t2))
    lr = math.exp(min(log_lr, 700.0))
    return SequentialResult("msprt", lr, min(1.0, 1 / lr), alpha, lr >= 1 / alpha)


def error_msprt(c_err: int, c_n: int, s_err: int, s_n: int, margin: float, alpha: float) -> SequentialResult:
    """mSPRT that the canary's error ratio exceeds stable's by more than `margin`."""
    # Half an error added to each side keeps the variance positive before the first error.
    pc, ps = (c_err + 0.5) / (c_n + 1), (s_err + 0.5) / (s_n + 1)
    variance = pc * (1 - pc) / c_n + ps * (1 - ps) / s_n
    return msprt(c_err / c_n - s_err / s_n, margin, variance, MSPRT_TAU["errors"], alpha)


def latency_msprt(canary: list[int], stable: list[int], q: float, ratio: float, alpha: float) -> SequentialResult:
    """mSPRT of the policy's own criterion: that the canary's q-quantile exceeds `ratio` times stable's,
    i.e. that more than 1 - q of canary requests are slower than ratio x stable's q-quantile. (A test of
    'slower at all' would reject any canary a little slower than stable, given enough requests.)"""
    stable_q = quantile(stable, q)
    n = sum(canary)
    if stable_q is None or n == 0:
        return SequentialResult("msprt", 1.0, 1.0, alpha, False)
    threshold = ratio * stable_q
    # Only buckets wholly above the threshold count as slower: the estimate leans towards keeping the canary.
    slower = sum(count for i, count in enumerate(canary) if (LATENCY_EDGES_MS[i - 1] if i else 0.0) >= threshold)
    share = (slower + 0.5) / (n + 1)
    return msprt(slower / n, 1 - q, share * (1 - share) / n, MSPRT_TAU["latency"], alpha)


def _mann_whitney(canary: list[int], stable: list[int]) -> tuple[float, float]:
    """U (canary over stable, ties counted half) and its tie-corrected variance under H0."""
    n1, n2 = sum(canary), sum(stable)
    n = n1 + n2
    u, below = 0.0, 0
    for a, b in zip(canary, stable, strict=True):
        u += a * (below + b / 2)
        below += b
    ties = sum((a + b) ** 3 - (a + b) for a, b in zip(canary, stable, strict=True))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    return u, var


def mann_whitney_greater(canary: list[int], stable: list[int]) -> tuple[float, float]:
    """(z, one-sided p) that canary values are stochastically larger, from histogram counts."""
    n1, n2 = sum(canary), sum(stable)
    u, var = _mann_whitney(canary, stable)
    if var <= 0:
        return 0.0, 1.0
    z = (u - n1 * n2 / 2) / math.sqrt(var)
    return z, 1 - norm_cdf(z)


def latency_test(canary: list[int], stable: list[int], q: float, ratio: float, alpha: float) -> TestResult:
    z, p = mann_whitney_greater(canary, stable)
    qc, qs = quantile(canary, q), quantile(stable, q)
    effect = (qc / qs) if qc is not None and qs else 1.0
    return TestResult("mann-whitney-u", z, p, alpha, effect, ratio, p < alpha and effect > ratio)


def divergence_test(n: int, total: float, tolerated: float, bound: float, alpha: float,
                    plan: int = 50) -> SequentialResult:
    """Anytime-valid test of H0: mean KL <= tolerated from n comparisons whose clipped KL sums to `total`.

    For each lambda >= 0, exp(lambda S - lambda^2 V / 2) with S = total - n x tolerated and V = n bound^2 / 4 is
    a supermartingale under H0; mixed over lambda ~ half-normal of precision rho (a mixture over lambda < 0 would
    not be one when the mean is below the tolerated one), it is
    2 sqrt(rho / (V + rho)) exp(S^2 / (2 (V + rho))) Phi(S / sqrt(V + rho)), which starts at 1. Rolling back when
    it reaches 1/alpha is wrong with probability at most alpha (Ville). rho puts the test's sharpest point near
    `plan` comparisons."""
    if n == 0 or alpha <= 0:
        return SequentialResult("normal-mixture", 1.0, 1.0, alpha, False)
    rho = plan * bound * bound / 4
    v = n * bound * bound / 4
    excess = total - n * tolerated
    spread = math.sqrt(v + rho)
    log_m = (math.log(2) + 0.5 * math.log(rho / (v + rho)) + excess * excess / (2 * (v + rho))
             + math.log(max(norm_cdf(excess / spread), 1e-300)))
    m = math.exp(min(log_m, 700.0))
    return SequentialResult("normal-mixture", m, min(1.0, 1 / m), alpha, log_m >= math.log(1 / alpha))
