"""Live metrics: per-version time series, refreshed in place every few seconds."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import streamlit as st

from admin.charts import time_chart
from admin.common import client, guard, history, settings
from admin.metrics import PROMQL, promql, series, series_name

RANGES = {"1 minute": 60, "5 minutes": 300, "15 minutes": 900, "1 hour": 3600}
CHARTS = [("rps", "requests/s"), ("p50_ms", "p50 latency (ms)"), ("p95_ms", "p95 latency (ms)"),
          ("p99_ms", "p99 latency (ms)"), ("error_rate", "error rate"), ("batch_size", "mean batch size"),
          ("cache_hit_ratio", "cache-hit ratio"), ("fallbacks_per_s", "fallbacks/s"),
          ("shadow_agreement", "shadow agreement"), ("tokens_per_s", "tokens/s (generation)"),
          ("ttft_p50_ms", "time to first token p50 (ms)"), ("ttft_p99_ms", "time to first token p99 (ms)"),
          ("violation_rate", "guardrail violation rate (output checks)")]

st.title("Live metrics")
conf = settings()
window = RANGES[st.selectbox("Time range", list(RANGES), key="range")]
st.caption(f"Refreshing every {conf.refresh_s:g} s from "
           + (f"Prometheus at {conf.prometheus_url}" if conf.prometheus_url else f"{conf.service_url}/metrics"))


def from_prometheus(url: str) -> bool:
    """Current values by PromQL; False (with a warning) when Prometheus is unreachable."""
    try:
        rows = {name: promql(url, query) for name, query in PROMQL.items()}
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        st.warning(f"Prometheus at {url} is unreachable ({type(exc).__name__}); showing the service's /metrics.")
        return False
    table: dict[tuple[str, str], dict[str, float]] = {}
    for name, results in rows.items():
        for r in results:
            key = (r["metric"].get("endpoint", ""), r["metric"].get("version", ""))
            table.setdefault(key, {})[name] = float(r["value"][1])
    st.dataframe(pd.DataFrame([{"endpoint": e, "version": v, **vals} for (e, v), vals in table.items()]),
                 hide_index=True)
    return True


@st.fragment(run_every=conf.refresh_s)
def live() -> None:
    with guard():
        if conf.prometheus_url and from_prometheus(conf.prometheus_url):
            return
        hist = history()
        hist.add(client().metrics_text(), time.time())
        rows = pd.DataFrame(series(hist, window))
        if rows.empty:
            st.info("Collecting: charts appear after two scrapes with traffic.")
            return
        rows["time"] = pd.to_datetime(rows["time"], unit="s")
        rows["series"] = [series_name(e, v) for e, v in zip(rows["endpoint"], rows["version"], strict=True)]
        cols = st.columns(3)
        for i, (metric, title) in enumerate(CHARTS):
            data = rows[["time", "series", metric]].dropna(subset=[metric])
            with cols[i % 3]:
                st.markdown(f"**{title}**")
                if data.empty:
                    st.caption("no data")
                else:
                    st.altair_chart(time_chart(data, metric), width="stretch")


live()
