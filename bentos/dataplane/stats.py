"""Per-version request stats in time buckets, shared through the control plane.

Each worker counts its own traffic and upserts its cumulative counts per bucket, so
/v1/admin/stats and canary analysis see every worker and every replica.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

BUCKET_S = 5
# A comparison's mean per-token KL (nats) counts at most this much: the divergence check's test needs a bound,
# and a version this far from stable is wrong whatever the exact figure.
KL_CLIP = 5.0
# Latency histogram edges in milliseconds; the last bucket is open-ended.
LATENCY_EDGES_MS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)


def bucket_of(ts: float) -> int:
    return int(ts // BUCKET_S)


@dataclass
class Counts:
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    comparisons: int = 0  # shadow comparisons with the primary, and the sum of their agreement
    agreement_sum: float = 0.0
    classes: list[int] = field(default_factory=list)  # predictions per class (classifiers), for the drift check
    # Language models: token-level comparisons with stable (decode/verdict.py): how many, and the sums of
    # their mean KL (each clipped to KL_CLIP, so that the divergence check can bound it) and log-prob ratio.
    scored: int = 0
    kl_sum: float = 0.0
    log_ratio_sum: float = 0.0
    # Language models with output guardrails: split-routed streams whose output was checked, and those cut.
    guarded: int = 0
    cut: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.fallbacks += other.fallbacks
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.comparisons += other.comparisons
        self.agreement_sum += other.agreement_sum
        self.classes = add_counts(self.classes, other.classes)
        self.scored += other.scored
        self.kl_sum += other.kl_sum
        self.log_ratio_sum += other.log_ratio_sum
        self.guarded += other.guarded
        self.cut += other.cut


def add_counts(a: list[int], b: list[int]) -> list[int]:
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return [x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer)]


def quantile(hist: list[int], q: float) -> float | None:
    """Quantile in ms from histogram counts, interpolating inside the bucket."""
    total = sum(hist)
    if total == 0:
        return None
    target, seen = q * total, 0
    for i, count in enumerate(hist):
        if seen + count >= target and count:
            lo = LATENCY_EDGES_MS[i - 1] if i else 0.0
            hi = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else LATENCY_EDGES_MS[-1] * 2
            return float(lo + (hi - lo) * (target - seen) / count)
        seen += count
    return float(LATENCY_EDGES_MS[-1])


AgreementRow = tuple[str, str, int, int, float]
ClassRow = tuple[str, str, int, list[int]]
DivergenceRow = tuple[str, str, int, int, float, float]
GuardRow = tuple[str, str, int, int, int]


class StatsRecorder:
    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str, int], Counts] = defaultdict(Counts)
        self._dirty: set[tuple[str, str, int]] = set()

    def record_agreement(self, endpoint: str, version: str, agreement: float) -> None:
        key = (endpoint, version, bucket_of(time.time()))
        self._buckets[key].comparisons += 1
        self._buckets[key].agreement_sum += agreement
        self._dirty.add(key)

    def pending_agreement(self) -> list[AgreementRow]:
        """Written with pending_rows' rows (same dirty keys), so `flushed(rows)` clears both."""
        return [(e, v, b, c.comparisons, c.agreement_sum)
                for (e, v, b), c in ((k, self._buckets[k]) for k in self._dirty) if c.comparisons]

    def record_divergence(self, endpoint: str, version: str, kl: float, log_ratio: float) -> None:
        key = (endpoint, version, bucket_of(time.time()))
        counts = self._buckets[key]
        counts.scored += 1
        counts.kl_sum += min(max(kl, 0.0), KL_CLIP)
        counts.log_ratio_sum += log_ratio
        self._dirty.add(key)

    def pending_divergence(self) -> list[DivergenceRow]:
        """Written with pending_rows' rows (same dirty keys), so `flushed(rows)` clears both."""
        return [(e, v, b, c.scored, c.kl_sum, c.log_ratio_sum)
                for (e, v, b), c in ((k, self._buckets[k]) for k in self._dirty) if c.scored]

    def record_guarded(self, endpoint: str, version: str, cut: bool) -> None:
        """A split-routed stream whose output the endpoint's guardrails checked, and whether they cut it."""
        key = (endpoint, version, bucket_of(time.time()))
        self._buckets[key].guarded += 1
        self._buckets[key].cut += 1 if cut else 0
        self._dirty.add(key)

    def pending_guarded(self) -> list[GuardRow]:
        """Written with pending_rows' rows (same dirty keys), so `flushed(rows)` clears both."""
        return [(e, v, b, c.guarded, c.cut) for (e, v, b), c in ((k, self._buckets[k]) for k in self._dirty)
                if c.guarded]

    def record_classes(self, endpoint: str, version: str, classes: list[int], n_classes: int) -> None:
        """Predicted classes of split-routed answers: the drift check compares canary's mix with stable's."""
        key = (endpoint, version, bucket_of(time.time()))
        counts = self._buckets[key]
        if len(counts.classes) < n_classes:
            counts.classes += [0] * (n_classes - len(counts.classes))
        for c in classes:
            counts.classes[c] += 1
        self._dirty.add(key)

    def pending_classes(self) -> list[ClassRow]:
        """Written with pending_rows' rows (same dirty keys), so `flushed(rows)` clears both."""
        return [(e, v, b, list(c.classes))
                for (e, v, b), c in ((k, self._buckets[k]) for k in self._dirty) if c.classes]

    def record(self, endpoint: str, version: str, ok: bool, latency_s: float | None,
               fallback: bool = False) -> None:
        """One answer; `latency_s` None for one whose time is not what a user would wait (a shadow copy)."""
        key = (endpoint, version, bucket_of(time.time()))
        counts = self._buckets[key]
        counts.requests += 1
        counts.errors += 0 if ok else 1
        counts.fallbacks += 1 if fallback else 0
        if latency_s is not None:
            counts.latency[bisect.bisect_left(LATENCY_EDGES_MS, latency_s * 1000)] += 1
        self._dirty.add(key)

    def pending_rows(self) -> list[tuple[str, str, int, int, int, int, list[int]]]:
        rows = [(e, v, b, c.requests, c.errors, c.fallbacks, list(c.latency))
                for (e, v, b), c in ((k, self._buckets[k]) for k in self._dirty)]
        return rows

    def flushed(self, rows: list[tuple[Any, ...]]) -> None:
        """Forget dirtiness of rows written; drop buckets older than a minute."""
        for endpoint, version, bucket, *_ in rows:
            self._dirty.discard((endpoint, version, bucket))
        horizon = bucket_of(time.time()) - 12
        for key in [k for k in self._buckets if k[2] < horizon and k not in self._dirty]:
            del self._buckets[key]


def merge(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], Counts]:
    """Store rows (every worker, every bucket) summed per (endpoint, version)."""
    merged: dict[tuple[str, str], Counts] = defaultdict(Counts)
    for endpoint, version, _bucket, requests, errors, fallbacks, latency in rows:
        merged[(endpoint, version)].add(Counts(requests, errors, fallbacks, list(latency)))
    return merged


def summarize(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Aggregate store rows into endpoint -> version -> counts, error rate and quantiles."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (endpoint, version), c in merge(rows).items():
        out[endpoint][version] = {
            "requests": c.requests, "errors": c.errors, "fallbacks": c.fallbacks,
            "error_rate": c.errors / c.requests if c.requests else 0.0,
            "latency_ms": {f"p{int(q * 100)}": quantile(c.latency, q) for q in (0.5, 0.95, 0.99)},
            "latency_histogram": {"edges_ms": list(LATENCY_EDGES_MS), "counts": c.latency},
        }
    return dict(out)
