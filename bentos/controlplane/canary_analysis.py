"""The statistics of canary analysis: pure functions, no I/O, numpy-free.

- errors: a one-sided test that the canary's error ratio exceeds stable's by more than a
  margin. A z-test with unpooled variance (H0: p_c - p_s <= margin); Fisher's exact test
  (H0: p_c <= p_s) when an expected error count is below 5, where the normal approximation
  fails. Either way a rollback also needs the observed difference to exceed the margin.
- latency: a one-sided Mann-Whitney U test on the latency histograms (every request in a
  bucket ties with the others there; the variance has the tie correction), that canary
  latencies are stochastically larger than stable's. A rollback also needs the canary's
  chosen quantile to exceed stable's by more than the policy's ratio.
- repeated looks: the controller tests the cumulative data at every interval. Each look
  may spend only the increment of a Lan-DeMets O'Brien-Fleming alpha-spending function,
  alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), where t is the fraction of the planned canary
  requests seen so far. The increments sum to alpha, so by the union bound the chance of any
  false rollback over the whole rollout stays at most alpha (split evenly between the checks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bentos.dataplane.stats import quantile


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


def mann_whitney_greater(canary: list[int], stable: list[int]) -> tuple[float, float]:
    """(z, one-sided p) that canary values are stochastically larger, from histogram counts."""
    n1, n2 = sum(canary), sum(stable)
    n = n1 + n2
    u, below = 0.0, 0
    for a, b in zip(canary, stable, strict=True):
        u += a * (below + b / 2)
        below += b
    ties = sum((a + b) ** 3 - (a + b) for a, b in zip(canary, stable, strict=True))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 0.0, 1.0
    z = (u - n1 * n2 / 2) / math.sqrt(var)
    return z, 1 - norm_cdf(z)


def latency_test(canary: list[int], stable: list[int], q: float, ratio: float, alpha: float) -> TestResult:
    z, p = mann_whitney_greater(canary, stable)
    qc, qs = quantile(canary, q), quantile(stable, q)
    effect = (qc / qs) if qc is not None and qs else 1.0
    return TestResult("mann-whitney-u", z, p, alpha, effect, ratio, p < alpha and effect > ratio)
