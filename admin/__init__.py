"""Switchyard's admin console: a Streamlit app that is a pure HTTP client of the service."""
