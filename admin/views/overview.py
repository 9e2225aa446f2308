"""Overview: health, each endpoint's split, and traffic tiles."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from admin.common import client, guard, history, setting, settings, split_rows
from admin.metrics import window_stats

ERROR_ALERT, P95_ALERT_MS = 0.01, 500.0


def split_table(versions: list[dict[str, Any]]) -> str:
    """The split as a Markdown table: weight, role, version (the tag in code, so it wraps, never hides)."""
    rows = [f"| {v['weight']} | {v['role']} | `{v['tag']}` |" for v in versions]
    return "\n".join(["| weight % | role | version |", "|---:|---|---|", *rows])

def mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1 << 20):.1f}"


def residency_line(endpoint: dict[str, Any]) -> str:
    """`on-demand · 1 of 2 versions loaded · 6.2 MiB` for one endpoint, as the answering worker holds it."""
    versions = endpoint.get("versions", [])
    loaded = [v for v in versions if v.get("state") == "loaded"]
    held = sum(v.get("resident_bytes") or 0 for v in loaded)
    return (f"residency {endpoint.get('residency', 'always')}  ·  {len(loaded)} of {len(versions)} versions loaded"
            f"  ·  {mib(held)} MiB")


st.title("Overview")
with guard():
    api = client()
    health = api.health()
    cols = st.columns(4)
    cols[0].metric("Ready", "yes" if health.get("ready") else "no")
    cols[1].metric("Control plane", "ok" if health["control_plane"]["ok"] else "unreachable")
    cols[2].metric("Endpoints", len(health["endpoints"]))
    memory = health.get("memory") or {}
    cols[3].metric("Model memory (a worker)", f"{mib(memory.get('used_bytes'))} MiB",
                   help=f"{memory.get('resident', 0)} versions loaded; budget "
                        f"{mib(memory.get('budget_bytes')) + ' MiB' if memory.get('budget_bytes') else 'none'} "
                        f"({setting('SWITCHYARD_MODEL_MEMORY')})")
    if not health["control_plane"]["ok"]:
        st.warning(f"Control plane: {health['control_plane']['error']}")
    deployments = api.deployments()

    @st.fragment(run_every=settings().refresh_s)
    def tiles() -> None:
        with guard():
            hist = history()
            hist.add(api.metrics_text())
            stats = window_stats(hist, 60)
            for endpoint, dep in deployments.items():
                st.subheader(f"/{endpoint}  ·  revision {dep['revision']}{'  ·  sticky' if dep['sticky'] else ''}")
                st.caption(residency_line(health["endpoints"].get(endpoint, {})))
                left, right = st.columns([2, 3])
                weights = pd.DataFrame(split_rows(dep["versions"])).set_index("version")[["weight %"]]
                left.bar_chart(weights, horizontal=True, height=120 + 30 * len(weights))
                # Text, weights first: in the narrow column a data grid cut "weight %" to "weigh" and scrolled
                # the weights out of sight behind long tags.
                left.markdown(split_table(dep["versions"]))
                versions = [(k, v) for k, v in stats.items() if k[0] == endpoint]
                rps = sum(v["rps"] for _, v in versions)
                errors = sum(v["rps"] * v["error_rate"] for _, v in versions) / rps if rps else 0.0
                p95 = max((v["p95_ms"] or 0.0 for _, v in versions), default=0.0)
                a, b, c = right.columns(3)
                a.metric("requests/s (1 min)", f"{rps:.1f}")
                b.metric("p95 latency", f"{p95:.0f} ms")
                c.metric("error rate", f"{errors * 100:.2f} %")
                if errors > ERROR_ALERT:
                    right.markdown(f":red[**error rate above {ERROR_ALERT:.0%}**]")
                if p95 > P95_ALERT_MS:
                    right.markdown(f":orange[**p95 above {P95_ALERT_MS:.0f} ms**]")
                if len(hist.snapshots) < 2:
                    right.caption("collecting metrics…")

    tiles()
