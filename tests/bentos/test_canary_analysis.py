"""bentos/controlplane/canary_analysis.py against scipy's reference implementations, and the alpha spending."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from bentos.controlplane.canary_analysis import (
    error_test,
    fisher_greater,
    mann_whitney_greater,
    norm_ppf,
    obrien_fleming_spent,
)


@pytest.mark.parametrize(("c_err", "c_n", "s_err", "s_n"), [(3, 40, 1, 400), (0, 10, 2, 300), (5, 20, 5, 20)])
def test_fisher_matches_scipy(c_err: int, c_n: int, s_err: int, s_n: int) -> None:
    expected = sps.fisher_exact([[c_err, c_n - c_err], [s_err, s_n - s_err]], alternative="greater").pvalue
    assert fisher_greater(c_err, c_n, s_err, s_n) == pytest.approx(expected, rel=1e-9)


def test_mann_whitney_on_histograms_matches_scipy_on_the_samples() -> None:
    rng = np.random.default_rng(3)
    canary, stable = rng.integers(0, 12, 300), rng.integers(0, 10, 900)  # bucket indices: heavy ties
    hist_c, hist_s = np.bincount(canary, minlength=12).tolist(), np.bincount(stable, minlength=12).tolist()
    z, p = mann_whitney_greater(hist_c, hist_s)
    ref = sps.mannwhitneyu(canary, stable, alternative="greater", method="asymptotic", use_continuity=False)
    assert p == pytest.approx(ref.pvalue, rel=1e-6) and z > 0


def test_obrien_fleming_spends_little_early_and_alpha_at_the_end() -> None:
    spent = [obrien_fleming_spent(0.05, t) for t in (0.1, 0.25, 0.5, 0.75, 1.0, 2.0)]
    assert spent == sorted(spent) and spent[0] < 1e-5 and spent[2] < 0.01
    assert spent[4] == pytest.approx(0.05, abs=1e-9) and spent[5] == spent[4]
    assert norm_ppf(0.975) == pytest.approx(1.959964, abs=1e-6)


def test_error_test_uses_fisher_when_errors_are_rare_and_needs_the_margin() -> None:
    rare = error_test(2, 50, 1, 1000, margin=0.01, alpha=0.05)
    assert rare.test == "fisher-exact"
    many = error_test(60, 1000, 5, 1000, margin=0.01, alpha=0.05)
    assert many.test == "two-proportion-z" and many.reject and many.effect == pytest.approx(0.055)
    inside_margin = error_test(70, 10_000, 5, 10_000, margin=0.01, alpha=0.05)  # 0.65 points: significant, small
    assert not inside_margin.reject and inside_margin.effect < 0.01


def test_the_divergence_test_is_the_half_normal_mixture_it_says_it_is() -> None:
    """Its closed form against numeric integration of exp(lambda S - lambda^2 V / 2) over a half-normal."""
    from scipy import integrate

    from bentos.controlplane.canary_analysis import divergence_test

    n, total, tolerated, bound, plan = 40, 16.0, 0.25, 5.0, 50
    rho, v = plan * bound**2 / 4, n * bound**2 / 4
    excess = total - n * tolerated
    numeric = integrate.quad(lambda lam: np.exp(lam * excess - lam**2 * v / 2) * 2 * sps.norm.pdf(lam, 0, rho**-0.5),
                             0, np.inf)[0]
    result = divergence_test(n, total, tolerated, bound, 0.05, plan)
    assert result.likelihood_ratio == pytest.approx(numeric, rel=1e-6)
    assert result.reject == (numeric >= 1 / 0.05)
    assert divergence_test(0, 0.0, tolerated, bound, 0.05).likelihood_ratio == 1.0  # it starts at 1


def test_the_divergence_test_rejects_a_true_null_at_most_alpha_of_the_time_at_any_look() -> None:
    """Bounded values whose mean is exactly the tolerated one, looked at after every comparison for 400:
    the share of paths ever rejected stays within alpha (Ville's inequality, not an approximation)."""
    from bentos.controlplane.canary_analysis import divergence_test

    rng, alpha, tolerated, bound = np.random.default_rng(7), 0.05, 0.25, 5.0
    ever = 0
    paths = 400
    for _ in range(paths):
        kl = np.minimum(rng.exponential(tolerated, 400), bound)
        kl *= tolerated / kl.mean()  # this path's mean is the tolerated one: the worst case under H0
        sums = np.cumsum(kl)
        ever += any(divergence_test(i + 1, float(sums[i]), tolerated, bound, alpha).reject for i in range(400))
    assert ever / paths <= alpha
    far = np.cumsum(np.full(60, 4.0))  # a model trained on other text
    assert next(i + 1 for i in range(60) if divergence_test(i + 1, float(far[i]), tolerated, bound, alpha).reject) <= 12
