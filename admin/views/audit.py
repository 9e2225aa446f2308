"""Audit log: who, when, what (before → after) and why; filterable, downloadable as CSV."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from admin.common import client, guard, split_text

st.title("Audit log")


def describe(spec: dict[str, Any] | None) -> str:
    return split_text(spec["versions"]) if spec and spec.get("versions") else "-"


with guard():
    entries = client().audit(limit=1000)
    rows = pd.DataFrame([{
        "when (UTC)": datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "who": e["actor"], "action": e["action"], "endpoint": e["endpoint"],
        "before": describe(e["before"]), "after": describe(e["after"]), "why": e["reason"],
        "revision": (e.get("details") or {}).get("revision"),
    } for e in entries])
    if rows.empty:
        st.info("No changes recorded yet.")
        st.stop()
    c1, c2, c3 = st.columns(3)
    endpoints = c1.multiselect("Endpoint", sorted(rows["endpoint"].unique()), key="audit_endpoint")
    actors = c2.multiselect("Who", sorted(rows["who"].unique()), key="audit_actor")
    actions = c3.multiselect("Action", sorted(rows["action"].unique()), key="audit_action")
    for column, chosen in (("endpoint", endpoints), ("who", actors), ("action", actions)):
        if chosen:
            rows = rows[rows[column].isin(chosen)]
    st.dataframe(rows, hide_index=True, width="stretch")
    st.download_button("Download CSV", rows.to_csv(index=False), "switchyard-audit.csv", "text/csv",
                       key="audit_csv")
