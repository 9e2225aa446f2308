"""Models: every version in the store, filters, and a side-by-side comparison."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from admin.client import quality
from admin.common import client, guard

st.title("Models")


def row(m: dict[str, Any]) -> dict[str, Any]:
    bench = (m.get("metrics") or {}).get("benchmark") or {}
    lineage = m.get("lineage") or {}
    return {"tag": m["tag"], "task": m.get("task"), "model": m["labels"].get("model"),
            "variant": m["labels"].get("variant"),
            "quality": quality(m), "gate": "passed" if (m.get("metrics") or {}).get("validation_passed") else "failed",
            "size MB": round((m.get("size_bytes") or 0) / 1e6, 2),
            "p50 ms": round((bench.get("latency_ms") or {}).get("p50", float("nan")), 3),
            "lineage": f"{lineage.get('parent', '?')} → {lineage.get('optimization', '?')}",
            "sha256": f"{len(m.get('sha256') or {})} artifacts hashed" if m.get("sha256") else "missing",
            "created": m.get("created", "")[:19]}


def shown_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value)


with guard():
    models = client().models()
    table = pd.DataFrame([row(m) for m in models])
    if table.empty:
        st.info("The store has no Switchyard models yet: run `python -m models build --all`.")
        st.stop()
    f1, f2 = st.columns(2)
    task_types = f1.multiselect("Task", sorted(table["task"].unique()), key="tasks")
    variants = f2.multiselect("Variant", sorted(table["variant"].unique()), key="variants")
    mask = pd.Series(True, index=table.index)
    if task_types:
        mask &= table["task"].isin(task_types)
    if variants:
        mask &= table["variant"].isin(variants)
    shown = table[mask]
    st.dataframe(shown, hide_index=True, width="stretch")
    st.subheader("Compare two versions")
    a, b = st.columns(2)
    left = a.selectbox("Version A", table["tag"], key="compare_a")
    right = b.selectbox("Version B", table["tag"], index=min(1, len(table) - 1), key="compare_b")
    by_tag = {m["tag"]: m for m in models}
    # Text only: a column of names and numbers together cannot become an Arrow column (it logged a traceback).
    cmp = pd.DataFrame({"A": row(by_tag[left]), "B": row(by_tag[right])}).map(shown_value)
    st.dataframe(cmp, width="stretch")
