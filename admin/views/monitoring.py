"""Monitoring: per version, input drift over time, the features drifting most, and a chosen feature's
live distribution against the version's validation data. A pure client of GET /v1/admin/drift."""

from __future__ import annotations

import json
import time

import pandas as pd
import streamlit as st

from admin.charts import bin_names, bins_chart, time_chart
from admin.client import ConsoleError
from admin.common import client, guard, may, setting, settings
from admin.metrics import series_name

THRESHOLD = 0.25  # the alert's PSI line (deploy/prometheus/rules/alerts.yml)

st.title("Monitoring")
conf = settings()
st.caption(f"Drift of each version's traffic against its validation data (PSI; {THRESHOLD} alerts), from the "
           f"sampled share of requests ({setting('SWITCHYARD_DRIFT_SAMPLE')}). Refreshing every "
           f"{conf.refresh_s:g} s.")


endpoint = None
with guard():
    api = client()
    endpoints = [e["name"] for e in api.endpoints()]
    endpoint = st.selectbox("Endpoint", endpoints, key="mon_endpoint")
if endpoint is None:  # the service said why (shown above), or has no endpoint yet
    st.stop()
name = str(endpoint)


@st.fragment(run_every=conf.refresh_s)
def monitoring() -> None:
    with guard():
        versions = client().drift(name)
        if not versions:
            st.info("No version of this endpoint is watched: versions registered before drift existed, or "
                    "imported without validation data, have no reference profile.")
            return
        trail = st.session_state.setdefault("drift_trail", [])
        now = pd.Timestamp(time.time(), unit="s")
        for tag, report in versions.items():
            trail.append({"time": now, "version": tag, "series": series_name(name, tag),
                          "input drift": report["score"], "prediction drift": report["prediction_drift"]})
        del trail[:-600]
        cols = st.columns(len(versions))
        for col, (tag, report) in zip(cols, versions.items(), strict=True):
            score = report["score"]
            col.metric(tag, "collecting" if score is None else f"PSI {score:.3f}",
                       help=f"{report['rows']} sampled rows")
            if score is not None and score > THRESHOLD:
                col.error(f"drifting: {report['worst'][0]['feature']} PSI {report['worst'][0]['psi']:.2f}")
        history = pd.DataFrame([t for t in trail if t["version"] in versions]).dropna(subset=["input drift"])
        st.subheader("Drift over time")
        if history.empty:
            st.caption("collecting")
        else:
            st.altair_chart(time_chart(history, "input drift", height=220), width="stretch")
        st.subheader("Features drifting most")
        st.dataframe(pd.DataFrame([{"version": tag, **w} for tag, r in versions.items() for w in r["worst"]]),
                     hide_index=True)
        features = sorted({f for r in versions.values() for f in r["features"]}) or \
            sorted({w["feature"] for r in versions.values() for w in r["worst"]})
        if not features:
            return
        worst = next((r["worst"][0]["feature"] for r in versions.values() if r["worst"]), features[0])
        feature = st.selectbox("Feature", features, index=features.index(worst), key="mon_feature")
        detailed = client().drift(name, feature)
        for tag, report in detailed.items():
            if report.get("histogram"):
                st.markdown(f"**{tag}**: `{feature}`, validation data against live traffic")
                h = report["histogram"]
                st.altair_chart(bins_chart(bin_names(h["edges"]), h["reference"], h["live"]), width="stretch")


monitoring()


def payload_log() -> None:
    """What each version was asked and answered lately: the canary's answers next to stable's."""
    st.subheader("Payload log")
    if not may("operator"):
        st.caption("Logged requests and answers are shown to operators and admins.")
        return
    try:
        entries = client().payloads(name, limit=50)
    except ConsoleError as exc:  # the service's own words say how to turn it on
        st.caption(str(exc))
        return
    if not entries:
        st.caption("Nothing logged yet for this endpoint.")
        return
    st.dataframe(pd.DataFrame([{"time": pd.Timestamp(e["ts"], unit="s"), "version": e["version"], "route": e["route"],
                                "latency ms": e["latency_ms"], "request id": e["request_id"], "key": e["key"],
                                "inputs": json.dumps(e["inputs"])[:120], "outputs": json.dumps(e["outputs"])[:120]}
                               for e in entries]), hide_index=True, width="stretch")


with guard():
    payload_log()
