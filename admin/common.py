"""What every console page shares: settings, the client, error display, split formatting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import streamlit as st

from admin.client import AdminClient, ConsoleError
from admin.metrics import History
from admin.settings import ConsoleSettings


def settings() -> ConsoleSettings:
    return ConsoleSettings()


def client() -> AdminClient:
    return AdminClient(settings())


def history() -> History:
    """Scrapes of /metrics kept for this browser session."""
    if "history" not in st.session_state:
        st.session_state["history"] = History()
    hist: History = st.session_state["history"]
    return hist


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show a ConsoleError as a message; the page stays usable."""
    try:
        yield
    except ConsoleError as exc:
        st.error(str(exc), icon=":material/error:")


def split_text(versions: list[dict[str, Any]]) -> str:
    return ", ".join(f"{v['tag']} {v['role']} {v['weight']}%" for v in versions)


def split_rows(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": v["tag"], "role": v["role"], "weight %": v["weight"]} for v in versions]
