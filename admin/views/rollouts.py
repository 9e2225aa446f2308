"""Rollouts: start an automated canary rollout, watch its evidence, pause, resume or abort it."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from admin.client import AdminClient
from admin.common import client, guard, may

st.title("Rollouts")


def progress(state: dict[str, Any]) -> None:
    st.markdown(f"**{state['canary']}** against stable **{state['stable']}** · status **{state['status']}** · "
                f"step **{state['percent']} %** of {', '.join(map(str, state['policy']['steps']))}")
    latest = state.get("latest")
    if not latest:
        st.caption("No analysis yet: the first look comes after one interval.")
        return
    p = latest["step_progress"]
    c1, c2 = st.columns(2)
    c1.progress(min(1.0, p["requests"] / p["min_requests"]),
                text=f"canary requests this step: {p['requests']} / {p['min_requests']}")
    c2.progress(min(1.0, p["seconds"] / max(p["min_seconds"], 1e-9)),
                text=f"time this step: {p['seconds']:.0f} / {p['min_seconds']:.0f} s")
    st.caption(f"Information fraction {latest['information_fraction']:.2f} (alpha is spent against it)")


def evidence_table(latest: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, check in latest["checks"].items():
        rows.append({"check": name, "test": check.get("test"), "statistic": check.get("statistic"),
                     "p-value": check.get("p_value"), "alpha this look": check.get("alpha"),
                     "effect": check.get("effect"), "threshold": check.get("threshold"),
                     "fails": check.get("reject")})
    for side in ("canary", "stable"):
        counts = latest[side]
        rows.append({"check": f"{side} counts", "test": f"{counts['requests']} requests, {counts['errors']} errors",
                     "effect": counts.get("error_ratio")})
    return pd.DataFrame(rows)


def history_table(state: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"when": time.strftime("%H:%M:%S", time.localtime(h["at"])), "decision": h["action"],
                          "step %": h.get("step"), "why": h.get("reason"), "by": h.get("actor") or h.get("controller")}
                         for h in reversed(state["decisions"])])


def flash(message: str) -> None:
    """The page again at once, showing what the change did and the rollout as it now stands (drawn below the
    form, the old state stayed on screen until Refresh)."""
    st.session_state["rollout_flash"] = message
    st.rerun()


def controls(api: AdminClient, endpoint: str, state: dict[str, Any]) -> None:
    if state["status"] not in ("running", "paused"):
        return
    reason = st.text_input("Reason (recorded in the audit log)", key="rollout_reason")
    c1, c2, c3 = st.columns(3)
    action = None
    if state["status"] == "running" and c1.button("Pause", key="rollout_pause"):
        action = "pause"
    if state["status"] == "paused" and c2.button("Resume", key="rollout_resume"):
        action = "resume"
    if c3.button("Abort (back to stable)", key="rollout_abort", type="primary"):
        action = "abort"
    if action:
        with guard():
            done = api.rollout_action(endpoint, action, reason.strip())
            flash(f"Rollout {done['status']}.")


def start_form(api: AdminClient, endpoint: str, stable: str | None) -> None:
    st.subheader("Start a rollout")
    tags = [m["tag"] for m in api.models() if m["labels"].get("family") == endpoint and m["tag"] != stable]
    if not tags:
        st.caption("No other version of this endpoint's model in the store.")
        return
    with st.form("start_rollout"):
        tag = st.selectbox("Canary version", tags, key="rollout_tag")
        c1, c2, c3 = st.columns(3)
        steps = c1.text_input("Steps (%)", "5, 25, 50, 100", key="rollout_steps")
        min_requests = c2.number_input("Min requests per step", 1, 10_000_000, 200, key="rollout_min_requests")
        min_seconds = c3.number_input("Min seconds per step", 0.0, 86_400.0, 30.0, key="rollout_min_seconds")
        interval_s = c1.number_input("Analysis interval (s)", 0.2, 600.0, 5.0, key="rollout_interval")
        alpha = c2.number_input("Alpha (false-rollback budget)", 0.001, 0.49, 0.05, format="%.3f")
        margin = c3.number_input("Error margin", 0.0, 1.0, 0.01, format="%.3f")
        ratio = c1.number_input("Latency ratio (p95)", 1.0, 100.0, 1.5)
        checks = c2.multiselect("Checks (agreement: every request in a shadow step, a sample in canary steps; "
                                "drift: the predicted-class mix against stable's; divergence: language models' "
                                "per-token KL from stable on the canary's own text; violations: streams cut by "
                                "the endpoint's output guardrails)",
                                ["errors", "latency", "agreement", "drift", "divergence", "violations"],
                                ["errors", "latency"],
                                key="rollout_checks")
        min_agreement = c3.number_input("Min agreement with stable", 0.0, 1.0, 0.95, format="%.3f",
                                        key="rollout_min_agreement")
        max_kl = c1.number_input("Max token KL (nats; divergence)", 0.001, 2.5, 0.25, format="%.3f",
                                 key="rollout_max_token_kl")
        violation_margin = c2.number_input("Violation margin (share of streams cut)", 0.0, 1.0, 0.01, format="%.3f",
                                           key="rollout_violation_margin")
        reason = st.text_input("Reason (recorded in the audit log)", key="start_reason")
        if st.form_submit_button("Start rollout", type="primary"):
            if not reason.strip():
                st.warning("Give a reason: it goes into the audit log.")
                return
            try:
                step_list = [int(s) for s in steps.replace(" ", "").split(",") if s]
            except ValueError:
                st.warning(f"Steps must be whole percentages separated by commas, got {steps!r}.")
                return
            policy = {"steps": step_list, "min_requests": int(min_requests), "min_seconds": min_seconds,
                      "interval_s": interval_s, "alpha": alpha, "error_margin": margin, "latency_ratio": ratio,
                      "checks": checks, "min_agreement": min_agreement, "max_token_kl": max_kl,
                      "violation_margin": violation_margin}
            with guard():
                state = api.start_rollout(endpoint, tag, policy, reason.strip())
                flash(f"Rollout of {state['canary']} started at {state['percent']} %.")


if "rollout_flash" in st.session_state:
    st.success(st.session_state.pop("rollout_flash"))
with guard():
    api = client()
    endpoints = list(api.deployments())
    endpoint = st.selectbox("Endpoint", endpoints, key="rollout_endpoint")
    state = api.rollout(endpoint)
    if state is None:
        st.info("No rollout on this endpoint yet. The form's defaults are the API's (docs: Roll out → Rollouts "
                "and canary analysis).")
    else:
        progress(state)
        if state.get("latest"):
            st.subheader("Latest evidence")
            st.dataframe(evidence_table(state["latest"]), hide_index=True)
        st.subheader("Decisions")
        st.dataframe(history_table(state), hide_index=True)
        if may("operator"):
            controls(api, endpoint, state)
    if not may("operator"):
        st.caption("Starting, pausing, resuming and aborting rollouts need the operator role.")
    elif state is None or state["status"] not in ("running", "paused"):
        stable = next((v["tag"] for v in api.deployment(endpoint)["versions"] if v["role"] == "stable"), None)
        start_form(api, endpoint, stable)
    if st.button("Refresh", key="rollout_refresh"):
        st.rerun()
