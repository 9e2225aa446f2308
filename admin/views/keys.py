"""API keys (admins only): create one (its secret is shown once), change its rate or weight, revoke it."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from admin.common import client, guard, setting

st.title("API keys")
st.caption(f"Inference needs a key when the service runs with {setting('SWITCHYARD_REQUIRE_API_KEY')}=true; a key sent "
           "without that is still checked. The service keeps only each key's hash.")

with guard():
    api = client()
    keys = api.keys()
    if keys:
        st.dataframe(pd.DataFrame([{"name": k["name"], "rate /s": k["rate"], "burst": k["burst"],
                                    "weight": k.get("weight", 1.0),
                                    "scopes": ", ".join(k["scopes"]), "by": k["created_by"],
                                    "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(k["created_at"])),
                                    "active": k["active"]} for k in keys]), hide_index=True, width="stretch")
    else:
        st.caption("No keys yet.")

    st.subheader("Create a key")
    with st.form("create_key"):
        c1, c2, c3, c4 = st.columns(4)
        name = c1.text_input("Name ([a-z0-9_-], up to 40; shown in metrics)", key="key_name")
        rate = c2.number_input("Rate (requests/s)", 0.1, 100_000.0, 10.0, key="key_rate")
        burst = c3.number_input("Burst", 1.0, 100_000.0, 20.0, key="key_burst")
        weight = c4.number_input("Generation weight (fair share)", 0.01, 1000.0, 1.0, key="key_weight")
        pin = st.checkbox("May pin a version (X-Model-Version)", key="key_pin")
        prioritize = st.checkbox("May ask generation for priority 'high'", key="key_priority")
        reason = st.text_input("Reason (recorded in the audit log)", key="key_reason")
        if st.form_submit_button("Create key", type="primary"):
            if not reason.strip():
                st.warning("Give a reason: it goes into the audit log.")
            else:
                with guard():
                    scopes = [s for s, on in (("pin", pin), ("priority", prioritize)) if on]
                    made = api.create_key(name.strip(), rate, burst, scopes, reason.strip(), weight)
                    st.success(f"Key {made['name']} created. Copy its secret now: it is not shown again.")
                    st.code(made["secret"], language=None)

    live = [k["name"] for k in keys if k["active"]]
    if live:
        st.subheader("Change or revoke a key")
        target = st.selectbox("Key", live, key="key_target")
        current = next(k for k in keys if k["name"] == target)
        c1, c2, c3 = st.columns(3)
        new_rate = c1.number_input("New rate (requests/s)", 0.1, 100_000.0, float(current["rate"]), key="key_new_rate")
        new_burst = c2.number_input("New burst", 1.0, 100_000.0, float(current["burst"]), key="key_new_burst")
        new_weight = c3.number_input("New weight", 0.01, 1000.0, float(current.get("weight", 1.0)),
                                     key="key_new_weight")
        why = st.text_input("Reason", key="key_change_reason")
        b1, b2 = st.columns(2)
        if b1.button("Save limits", key="key_save"):
            with guard():
                api.update_key(target, {"rate": new_rate, "burst": new_burst, "weight": new_weight}, why.strip())
                st.success(f"{target}: {new_rate:g}/s, burst {new_burst:g}, weight {new_weight:g}")
        if b2.button("Revoke", key="key_revoke"):
            with guard():
                api.revoke_key(target, why.strip())
                st.success(f"{target} is revoked: every replica refuses it from its next poll")
