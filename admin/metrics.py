"""Per-version live metrics from the service's /metrics (or PromQL on a Prometheus server).

Scrapes are kept as snapshots; rates and histogram quantiles come from the difference
between the newest snapshot and the one at the start of the chosen window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Snapshot:
    ts: float
    samples: Samples


@dataclass
class History:
    snapshots: list[Snapshot] = field(default_factory=list)
    keep_s: float = 3600

    def add(self, text: str, ts: float | None = None) -> None:
        self.snapshots.append(Snapshot(ts or time.time(), parse(text)))
        horizon = self.snapshots[-1].ts - self.keep_s
        self.snapshots = [s for s in self.snapshots if s.ts >= horizon]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("switchyard_"):
            continue
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def _delta(new: Samples, old: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value - old.get((n, labels), 0.0) for (n, labels), value in new.items() if n == name}


def _by(deltas: dict[tuple[tuple[str, str], ...], float], *keys: str,
        where: dict[str, str] | None = None) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in deltas.items():
        d = dict(labels)
        if where and any(d.get(k) != v for k, v in where.items()):
            continue
        out[tuple(d.get(k, "") for k in keys)] += value
    return dict(out)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus-style quantile from cumulative bucket counts {le: count}."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    target, prev_le, prev_count = q * buckets[edges[-1]], 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= target:
            if le == float("inf"):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((target - prev_count) / width if width else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def window_stats(history: History, window_s: float) -> dict[tuple[str, str], dict[str, Any]]:
    """(endpoint, version) -> rps, error rate, p50/p95/p99 ms, batch size, cache-hit ratio, fallbacks, agreement."""
    if len(history.snapshots) < 2:
        return {}
    new = history.snapshots[-1]
    old = next((s for s in history.snapshots if s.ts >= new.ts - window_s), history.snapshots[0])
    if old is new:
        old = history.snapshots[-2]
    dt = max(1e-6, new.ts - old.ts)
    requests = _delta(new.samples, old.samples, "switchyard_requests_total")
    total = _by(requests, "endpoint", "version")
    errors = _by(requests, "endpoint", "version", where={"outcome": "error"})
    hits = _by(_delta(new.samples, old.samples, "switchyard_cache_hits_total"), "endpoint", "version")
    fallbacks = _by(_delta(new.samples, old.samples, "switchyard_fallbacks_total"), "endpoint", "version")
    completion = _by(_delta(new.samples, old.samples, "switchyard_tokens_total"), "endpoint", "version",
                     where={"kind": "completion"})
    output = {"stage": "output"}  # prompts are judged before routing: only output checks belong to a version
    checked = _by(_delta(new.samples, old.samples, "switchyard_guardrail_checks_total"), "endpoint", "version",
                  where=output)
    violated = _by(_delta(new.samples, old.samples, "switchyard_guardrail_violations_total"), "endpoint", "version",
                   where=output)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, n in total.items():
        lat = _buckets(new.samples, old.samples, "switchyard_request_duration_seconds_bucket", key)
        bsum = _by(_delta(new.samples, old.samples, "switchyard_batch_size_sum"), "endpoint", "version").get(key, 0)
        bcnt = _by(_delta(new.samples, old.samples, "switchyard_batch_size_count"), "endpoint", "version").get(key, 0)
        agree_sum = _by(_delta(new.samples, old.samples, "switchyard_shadow_agreement_sum"), "endpoint", "version")
        agree_cnt = _by(_delta(new.samples, old.samples, "switchyard_shadow_agreement_count"), "endpoint", "version")
        ttft = _buckets(new.samples, old.samples, "switchyard_time_to_first_token_seconds_bucket", key)
        out[(key[0], key[1])] = {
            "rps": n / dt, "error_rate": errors.get(key, 0.0) / n if n else 0.0,
            **{f"p{int(q * 100)}_ms": _ms(histogram_quantile(q, lat)) for q in (0.5, 0.95, 0.99)},
            "batch_size": bsum / bcnt if bcnt else None,
            "cache_hit_ratio": hits.get(key, 0.0) / n if n else 0.0,
            "fallbacks_per_s": fallbacks.get(key, 0.0) / dt,
            "shadow_agreement": (agree_sum.get(key, 0.0) / agree_cnt[key]) if agree_cnt.get(key) else None,
            # Generation: completion tokens a second, and time to first token (None for one-forward versions).
            "tokens_per_s": completion[key] / dt if completion.get(key) else None,
            "ttft_p50_ms": _ms(histogram_quantile(0.5, ttft)) if any(ttft.values()) else None,
            "ttft_p99_ms": _ms(histogram_quantile(0.99, ttft)) if any(ttft.values()) else None,
            # Guardrails: the share of output checks that hit (None without guardrails).
            "violation_rate": violated.get(key, 0.0) / checked[key] if checked.get(key) else None,
        }
    return out


def _buckets(new: Samples, old: Samples, name: str, key: tuple[str, ...]) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, labels), value in new.items():
        d = dict(labels)
        if n == name and (d.get("endpoint"), d.get("version")) == key:
            out[float(d["le"])] += value - old.get((n, labels), 0.0)
    return dict(out)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def promql(url: str, query: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Instant query against a Prometheus server; raises httpx errors to the caller."""
    r = httpx.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=timeout)
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def series(history: History, range_s: float, step_window_s: float = 15.0) -> list[dict[str, Any]]:
    """One row per (scrape, endpoint, version) in the range: rates over the preceding step window."""
    if not history.snapshots:
        return []
    start = history.snapshots[-1].ts - range_s
    rows = []
    for i, snap in enumerate(history.snapshots):
        if snap.ts < start or i == 0:
            continue
        view = History(history.snapshots[: i + 1], history.keep_s)
        for (endpoint, version), stats in window_stats(view, step_window_s).items():
            rows.append({"time": snap.ts, "endpoint": endpoint, "version": version, **stats})
    return rows


PROMQL = {
    "rps": 'sum by (endpoint, version) (rate(switchyard_requests_total[1m]))',
    "error_rate": 'sum by (endpoint, version) (rate(switchyard_requests_total{outcome="error"}[1m])) / '
                  'sum by (endpoint, version) (rate(switchyard_requests_total[1m]))',
    "p95_ms": '1000 * histogram_quantile(0.95, sum by (endpoint, version, le) '
              '(rate(switchyard_request_duration_seconds_bucket[1m])))',
    "tokens_per_s": 'sum by (endpoint, version) (rate(switchyard_tokens_total{kind="completion"}[1m]))',
    "ttft_p99_ms": '1000 * histogram_quantile(0.99, sum by (endpoint, version, le) '
                   '(rate(switchyard_time_to_first_token_seconds_bucket[1m])))',
    "violation_rate": 'sum by (endpoint, version) (rate(switchyard_guardrail_violations_total{stage="output"}[1m])) / '
                      'sum by (endpoint, version) (rate(switchyard_guardrail_checks_total{stage="output"}[1m]))',
}


VERSION_ID_CHARS = 8  # of a tag's version id in a chart label: enough to tell a model's versions apart


def series_name(endpoint: str, version: str) -> str:
    """A chart label that fits a legend and that Altair takes literally: "digits · cnn-fp32 @ ucqktphr" for
    digits-cnn-fp32:ucqktphrrszekax4 (the endpoint's own name is not repeated; the full tag is in the
    tooltip and on the Models page).

    Altair reads "a:b" as field a of encoding type b (a tag's version suffix broke the live
    charts), and dots and brackets as nested access.
    """
    model, _, vid = version.partition(":")
    model = model.removeprefix(f"{endpoint}-") or model
    name = f"{endpoint} · {model}" + (f":{vid[:VERSION_ID_CHARS]}" if vid else "")
    for char, safe in ((":", " @ "), (".", "_"), ("[", "("), ("]", ")"), ("\\", "/")):
        name = name.replace(char, safe)
    return name
