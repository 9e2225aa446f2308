"""Switchyard console: `streamlit run admin/app.py`. A pure HTTP client of the service."""

from __future__ import annotations

import streamlit as st

from admin.common import may, sign_in, sign_out_button

st.set_page_config(page_title="Switchyard console", page_icon=":material/alt_route:", layout="wide")
if not sign_in():
    st.stop()
sign_out_button()
pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("pages/endpoints.py", title="Endpoints", icon=":material/hub:"),
    st.Page("pages/deployments.py", title="Deployments", icon=":material/alt_route:"),
    st.Page("pages/rollouts.py", title="Rollouts", icon=":material/rocket_launch:"),
    st.Page("pages/live.py", title="Live metrics", icon=":material/monitoring:"),
    st.Page("pages/audit.py", title="Audit log", icon=":material/history:"),
]
if may("admin"):
    pages.append(st.Page("pages/keys.py", title="API keys", icon=":material/key:"))
st.navigation(pages).run()
