"""Switchyard console: `streamlit run admin/app.py`. A pure HTTP client of the service."""

from __future__ import annotations

import streamlit as st

from admin.common import may, sign_in, sign_out_button

# The pages live in views/, not pages/: Streamlit serves a pages/ directory by itself when a page's URL
# is opened directly, which would skip the sign-in below and the role-aware navigation.
st.set_page_config(page_title="Switchyard console", page_icon=":material/alt_route:", layout="wide")
if not sign_in():
    st.stop()
sign_out_button()
pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/models.py", title="Models", icon=":material/inventory_2:"),
    st.Page("views/endpoints.py", title="Endpoints", icon=":material/hub:"),
    st.Page("views/deployments.py", title="Deployments", icon=":material/alt_route:"),
    st.Page("views/rollouts.py", title="Rollouts", icon=":material/rocket_launch:"),
    st.Page("views/live.py", title="Live metrics", icon=":material/monitoring:"),
    st.Page("views/monitoring.py", title="Monitoring", icon=":material/query_stats:"),
    st.Page("views/audit.py", title="Audit log", icon=":material/history:"),
]
if may("admin"):
    pages.append(st.Page("views/keys.py", title="API keys", icon=":material/key:"))
st.navigation(pages).run()
