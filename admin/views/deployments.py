"""Deployments: change an endpoint's split, promote its canary, roll back to any revision.

Every change asks for a reason (it goes into the audit log) and a confirmation.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from admin.client import AdminClient
from admin.common import client, guard, may, split_rows, split_text

NONE = "(none)"

st.title("Deployments")


def confirmed(prefix: str) -> str | None:
    """The reason, once the person gave one and ticked the confirmation; else None."""
    reason = st.text_input("Reason (recorded in the audit log)", key=f"{prefix}_reason")
    sure = st.checkbox("I confirm this change", key=f"{prefix}_confirm")
    if not st.button("Apply" if prefix == "split" else prefix.capitalize(), key=f"{prefix}_go", type="primary"):
        return None
    if not reason.strip():
        st.warning("Give a reason: it goes into the audit log.")
        return None
    if not sure:
        st.warning("Tick the confirmation first.")
        return None
    return reason.strip()


def new_split(stable: dict[str, Any], canary: str, pct: int, shadow: str) -> list[dict[str, Any]]:
    versions = [{"tag": stable["tag"], "role": "stable", "weight": 100 - (pct if canary != NONE else 0)}]
    if canary != NONE:
        versions.append({"tag": canary, "role": "canary", "weight": pct})
    if shadow != NONE:
        versions.append({"tag": shadow, "role": "shadow", "weight": 0})
    return versions


def change_split(api: AdminClient, endpoint: str, dep: dict[str, Any]) -> None:
    st.subheader("Change the split")
    versions = dep["versions"]
    stable = next(v for v in versions if v["role"] == "stable")
    canary = next((v for v in versions if v["role"] == "canary"), None)
    shadow = next((v for v in versions if v["role"] == "shadow"), None)
    # Versions of the endpoint's task; the service still checks each one's signature.
    tags = [m["tag"] for m in api.models() if m.get("task") == dep["task"] and m["tag"] != stable["tag"]]
    options = [NONE, *tags]
    st.caption(f"Stable: **{stable['tag']}**")
    c1, c2 = st.columns(2)
    canary_tag = c1.selectbox("Canary version", options, key="canary_tag",
                              index=options.index(canary["tag"]) if canary and canary["tag"] in options else 0)
    shadow_tag = c2.selectbox("Shadow version (mirrored, never answers)", options, key="shadow_tag",
                              index=options.index(shadow["tag"]) if shadow and shadow["tag"] in options else 0)
    pct = st.slider("Canary traffic %", 0, 100, canary["weight"] if canary else 10, key="canary_pct")
    sample = st.slider("Shadow sample: % of requests copied to the shadow (only on spare capacity)", 0, 100,
                       int(dep.get("shadow_sample", 100)), key="shadow_sample", disabled=shadow_tag == NONE)
    sticky = st.toggle("Sticky routing by X-Routing-Key", value=dep["sticky"], key="sticky")
    proposed = new_split(stable, canary_tag, pct, shadow_tag)
    sampled = f" · shadow sample {sample} %" if shadow_tag != NONE else ""
    st.caption(f"Proposed: {split_text(proposed)}{' · sticky' if sticky else ''}{sampled}")
    reason = confirmed("split")
    if reason:
        with guard():
            record = api.deploy(endpoint, proposed, sticky, reason, float(sample))
            st.success(f"Revision {record['revision']} is live: {split_text(record['versions'])}")


def promote(api: AdminClient, endpoint: str, dep: dict[str, Any]) -> None:
    st.subheader("Promote the canary")
    canary = next((v for v in dep["versions"] if v["role"] == "canary"), None)
    if canary is None:
        st.caption("No canary to promote.")
        return
    st.caption(f"{canary['tag']} becomes stable at 100 %.")
    reason = confirmed("promote")
    if reason:
        with guard():
            record = api.promote(endpoint, reason)
            st.success(f"Promoted: revision {record['revision']}, {split_text(record['versions'])}")


def rollback(api: AdminClient, endpoint: str, dep: dict[str, Any]) -> None:
    st.subheader("Roll back")
    revisions = dep.get("revisions", [])[1:]
    if not revisions:
        st.caption("No earlier revision yet.")
        return
    labels = {f"revision {r['revision']}: {split_text(r['spec']['versions'])} ({r['action']} by {r['actor']})":
              r["revision"] for r in revisions}
    choice = st.selectbox("Back to", list(labels), key="rollback_to")
    reason = confirmed("rollback")
    if reason:
        with guard():
            record = api.rollback(endpoint, labels[choice], reason)
            st.success(f"Rolled back: revision {record['revision']}, {split_text(record['versions'])}")


with guard():
    api = client()
    endpoints = list(api.deployments())
    endpoint = st.selectbox("Endpoint", endpoints, key="endpoint")
    dep = api.deployment(endpoint)
    if not dep["versions"]:
        st.info(f"{endpoint} has no deployment yet: deploy a {dep['task']} version through the API, or create "
                "the endpoint with a model.")
        st.stop()
    st.markdown(f"**{dep['task']}** · `POST {dep['route']}` · **revision {dep['revision']}**"
                f"{' · sticky' if dep['sticky'] else ''}")
    st.dataframe(pd.DataFrame(split_rows(dep["versions"])), hide_index=True)
    if may("operator"):
        change_split(api, endpoint, dep)
        promote(api, endpoint, dep)
        rollback(api, endpoint, dep)
    else:
        st.caption("Changing the split, promoting and rolling back need the operator role.")
