"""Switchyard console: `streamlit run admin/app.py`. A pure HTTP client of the service."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from admin.common import may, sign_in, sign_out_button

# The pages live in views/, not pages/: Streamlit serves a pages/ directory by itself when a page's URL
# is opened directly, which would skip the sign-in below and the role-aware navigation.
# The icon is a file of ours: a Material icon as page or page_icon becomes a favicon fetched from fonts.gstatic.com,
# and the console must load nothing from outside (it runs on machines without internet).
ICON = str(Path(__file__).parent / "assets" / "switchyard.png")
st.set_page_config(page_title="Switchyard console", page_icon=ICON, layout="wide")
if not sign_in():
    st.stop()
sign_out_button()
pages = [
    st.Page("views/overview.py", title="Overview", default=True),
    st.Page("views/models.py", title="Models"),
    st.Page("views/endpoints.py", title="Endpoints"),
    st.Page("views/deployments.py", title="Deployments"),
    st.Page("views/rollouts.py", title="Rollouts"),
    st.Page("views/live.py", title="Live metrics"),
    st.Page("views/monitoring.py", title="Monitoring"),
    st.Page("views/audit.py", title="Audit log"),
]
if may("admin"):
    pages.append(st.Page("views/keys.py", title="API keys"))
st.navigation(pages).run()
