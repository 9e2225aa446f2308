"""Drift statistics: PSI and KS between live and reference bins, and the live profile's fixed memory."""

from __future__ import annotations

import numpy as np

from bentos.dataplane.drift import CAP_ROWS, MIN_ROWS, DriftMonitor, LiveProfile, ks, psi, reference_profile

RNG = np.random.default_rng(7)


def reference(n: int = 2000) -> dict:
    return reference_profile({"x": RNG.normal(0, 1, n), "pixel": RNG.integers(0, 17, n).astype(float)},
                             RNG.integers(0, 10, n), 10)


def test_same_distribution_scores_low_and_a_shift_scores_high() -> None:
    ref = reference()
    same, shifted = LiveProfile(ref), LiveProfile(ref)
    same.add({"x": RNG.normal(0, 1, 500), "pixel": RNG.integers(0, 17, 500).astype(float)}, RNG.integers(0, 10, 500))
    shifted.add({"x": RNG.normal(1.5, 1, 500), "pixel": 16 - RNG.integers(0, 4, 500).astype(float)},
                np.full(500, 3))
    low, high = same.report(), shifted.report()
    assert low["score"] < 0.1 and low["prediction_drift"] < 0.1
    assert high["score"] > 1.0 and high["prediction_drift"] > 1.0
    assert {w["feature"] for w in high["worst"][:2]} == {"x", "pixel"}
    assert high["features"]["x"]["ks"] > 0.4 > low["features"]["x"]["ks"]


def test_psi_and_ks_of_identical_shares_are_zero_and_grow_with_distance() -> None:
    ref = np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(np.array([25, 25, 25, 25]), ref) == 0 and ks(np.array([1, 1, 1, 1]), ref) == 0
    assert 0 < psi(np.array([30, 20, 25, 25]), ref) < psi(np.array([70, 10, 10, 10]), ref)
    assert ks(np.array([100, 0, 0, 0]), ref) == 0.75


def test_too_few_rows_give_no_score_and_memory_is_fixed() -> None:
    live = LiveProfile(reference())
    live.add({"x": RNG.normal(0, 1, MIN_ROWS - 1), "pixel": np.zeros(MIN_ROWS - 1)}, None)
    assert live.report()["score"] is None
    for _ in range(20):
        live.add({"x": RNG.normal(0, 1, 500), "pixel": np.zeros(500)}, None)
    assert live.rows <= CAP_ROWS and sum(live.counts["x"]) <= CAP_ROWS + 1


def test_only_versions_with_a_reference_are_watched() -> None:
    monitor = DriftMonitor(sample=1.0)
    monitor.watch("a:1", reference())
    monitor.watch("imported:1", None)
    assert monitor.wants("a:1") and not monitor.wants("imported:1")
    monitor.forget({"b:1"})
    assert monitor.live == {}
