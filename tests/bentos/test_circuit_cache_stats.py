"""Circuit breaker, prediction cache, and latency quantiles from histogram buckets."""

from __future__ import annotations

import time

import pytest

from bentos.dataplane.cache import PredictionCache, input_key
from bentos.dataplane.circuit import CircuitBreaker, CircuitPolicy, State
from bentos.dataplane.stats import LATENCY_EDGES_MS, StatsRecorder, quantile, summarize


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_consecutive_failures_then_probes_half_open() -> None:
    clock = Clock()
    cb = CircuitBreaker(CircuitPolicy(failures=3, cooldown_s=5), clock)
    for _ in range(2):
        cb.record(False)
    assert cb.state is State.CLOSED and cb.allow()
    cb.record(False)
    assert cb.state is State.OPEN and not cb.allow()
    clock.t += 5.1
    assert cb.allow() and cb.state is State.HALF_OPEN
    assert not cb.allow()  # one probe at a time
    cb.record(True)
    assert cb.state is State.CLOSED and cb.allow()


def test_failed_probe_reopens() -> None:
    clock = Clock()
    cb = CircuitBreaker(CircuitPolicy(failures=1, cooldown_s=1), clock)
    cb.record(False)
    clock.t += 1.5
    assert cb.allow()
    cb.record(False)
    assert cb.state is State.OPEN and not cb.allow()


def test_opens_on_error_rate_within_the_window() -> None:
    clock = Clock()
    cb = CircuitBreaker(CircuitPolicy(failures=100, error_rate=0.5, window_s=10, min_requests=10), clock)
    for ok in [True] * 5 + [False, True] * 5 + [False] * 5:  # 10 failures in 20
        cb.record(ok)
    assert cb.state is State.CLOSED  # 50 % is not above 50 %
    cb.record(False)  # 11 in 21
    assert cb.state is State.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = Clock()
    cb = CircuitBreaker(CircuitPolicy(failures=100, error_rate=0.5, window_s=10, min_requests=4), clock)
    for _ in range(3):
        cb.record(True)
        cb.record(False)
    assert cb.state is State.CLOSED
    clock.t += 11
    for _ in range(3):
        cb.record(True)
    cb.record(False)
    assert cb.state is State.CLOSED


def test_cache_lru_and_ttl() -> None:
    cache = PredictionCache(size=2, ttl_s=0.05)
    a, b, c = (input_key("v1", [i]) for i in range(3))
    assert input_key("v1", [0]) == a != input_key("v2", [0])
    cache.put(a, "A")
    cache.put(b, "B")
    assert cache.get(a) == "A"
    cache.put(c, "C")  # evicts b, the least recently used
    assert cache.get(b) is None and cache.get(c) == "C"
    time.sleep(0.06)
    assert cache.get(a) is None


def test_disabled_cache_stores_nothing() -> None:
    cache = PredictionCache(size=0, ttl_s=10)
    cache.put("k", 1)
    assert cache.get("k") is None


def test_quantiles_from_histogram() -> None:
    hist = [0] * (len(LATENCY_EDGES_MS) + 1)
    hist[LATENCY_EDGES_MS.index(10)] = 100  # all in (7, 10] ms
    assert 7 <= quantile(hist, 0.5) <= 10  # type: ignore[operator]
    assert quantile([0] * len(hist), 0.5) is None


def test_recorder_rows_summarize_per_version() -> None:
    rec = StatsRecorder()
    for i in range(10):
        rec.record("digits", "v1", ok=i != 0, latency_s=0.004)
    rec.record("digits", "v2", ok=True, latency_s=0.2, fallback=True)
    rows = rec.pending_rows()
    out = summarize(rows)["digits"]
    assert out["v1"]["requests"] == 10 and out["v1"]["errors"] == 1
    assert out["v1"]["error_rate"] == pytest.approx(0.1)
    assert out["v2"]["fallbacks"] == 1 and out["v2"]["latency_ms"]["p50"] > 100
    rec.flushed(rows)
    assert rec.pending_rows() == []
