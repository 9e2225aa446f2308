"""Endpoints: what the service serves, and creating or deleting one with no restart."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from admin.common import client, guard, may

TASKS = ["image-classification", "text-classification", "text-embedding", "tensor"]

st.title("Endpoints")


def rows(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"endpoint": e["name"], "task": e["task"], "route": e["route"], "revision": e["revision"],
             "stable": next((v["tag"] for v in e["versions"] if v["role"] == "stable"), "-"),
             "source": e["source"], "ready": e["ready"]} for e in endpoints]


with guard():
    api = client()
    endpoints = api.endpoints()
    st.dataframe(pd.DataFrame(rows(endpoints)), hide_index=True, width="stretch")
    if not may("admin"):
        st.caption("Creating and deleting endpoints needs the admin role.")
        st.stop()

    st.subheader("Create an endpoint")
    # Outside the form, so that the list of versions follows the task at once.
    task = st.selectbox("Task type", TASKS, key="ep_task")
    models = [m["tag"] for m in api.models() if m.get("task") == task]
    with st.form("create"):
        name = st.text_input("Name ([a-z0-9-], up to 40)", key="ep_name")
        model = st.selectbox("First deployment (a stored version of this task)", ["(none yet)", *models],
                             key="ep_model")
        max_rows = st.number_input("Max rows per request (0: the server's default)", 0, 4096, 0, key="ep_rows")
        reason = st.text_input("Reason (recorded in the audit log)", key="ep_reason")
        if st.form_submit_button("Create", type="primary"):
            if not reason.strip():
                st.warning("Give a reason: it goes into the audit log.")
            else:
                config = {"name": name.strip(), "task": task, "limits": {"max_rows": max_rows or None},
                          "model": None if model == "(none yet)" else model}
                with guard():
                    made = api.create_endpoint(config, reason.strip())
                    st.success(f"{made['name']} serves at POST {made['route']} (revision {made['revision']})")

    deletable = [e["name"] for e in endpoints if e["source"] == "api"]
    st.subheader("Delete an endpoint")
    if not deletable:
        st.caption("Only endpoints created here or through the API can be deleted; switchyard.yaml declares the rest.")
    else:
        victim = st.selectbox("Endpoint", deletable, key="del_name")
        why = st.text_input("Reason", key="del_reason")
        sure = st.checkbox("I confirm: its deployment history goes too (the audit log keeps it)", key="del_sure")
        if st.button("Delete", key="del_go"):
            if not why.strip() or not sure:
                st.warning("Give a reason and tick the confirmation first.")
            else:
                with guard():
                    api.delete_endpoint(victim, why.strip())
                    st.success(f"{victim} is deleted")
