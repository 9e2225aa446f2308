"""What every console page shares: settings, the client, error display, split formatting."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import streamlit as st

from admin.client import AdminClient, ConsoleError
from admin.metrics import History
from admin.settings import ConsoleSettings


def settings() -> ConsoleSettings:
    return ConsoleSettings()


def setting(name: str) -> str:
    """A setting named in the console, as Markdown: a link to its reference entry when SWITCHYARD_DOCS_URL is
    set (docs/gen_reference.py gives each variable an anchor of its name in lower case)."""
    base = settings().docs_url
    if not base:
        return f"`{name}`"
    return f"[`{name}`]({base.rstrip('/')}/reference/settings/#{name.lower()})"


def linked(text: str) -> str:
    """An error message with each setting it names linked to its reference entry (when SWITCHYARD_DOCS_URL is
    set; otherwise as it came, from this console or from the service)."""
    if not settings().docs_url:
        return text
    return re.sub(r"`?\b(SWITCHYARD_[A-Z0-9_]+)\b`?", lambda m: setting(m.group(1)), text)


ROLES = ("viewer", "operator", "admin")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def on_loopback() -> bool:
    """Whether the console listens on this machine only (`--server.address`; unset means every interface)."""
    return str(st.get_option("server.address") or "") in LOOPBACK


def client() -> AdminClient:
    """A client with the signed-in person's own token (kept only in this browser session). The console's own
    SWITCHYARD_ADMIN_TOKEN stands in for a visitor only while the console listens on loopback."""
    token = st.session_state.get("token")
    return AdminClient(settings(), token="" if token is None and not on_loopback() else token)


def sign_in() -> bool:
    """Whether someone is signed in; otherwise show the sign-in form. A console started with
    SWITCHYARD_ADMIN_TOKEN (`make serve`, on 127.0.0.1) signs its one user in with that token, but only
    while it listens on loopback: reachable from elsewhere, every visitor signs in with their own token."""
    if "who" in st.session_state:
        return True
    if settings().admin_token is not None and on_loopback():
        with guard():
            st.session_state["who"] = client().whoami()
            return True
        return False
    st.title("Sign in to Switchyard")
    with st.form("sign_in"):
        token = st.text_input("Your admin token", type="password", key="sign_in_token",
                              help="Your own token from SWITCHYARD_ADMIN_TOKENS; your name goes into the audit log.")
        if st.form_submit_button("Sign in", type="primary") and token.strip():
            with guard():
                st.session_state["who"] = AdminClient(settings(), token=token.strip()).whoami()
                st.session_state["token"] = token.strip()
                st.rerun()
    return False


def who() -> dict[str, str]:
    """The signed-in person; asked of the service once per session (a page may run without app.py)."""
    if "who" not in st.session_state:
        try:
            st.session_state["who"] = client().whoami()
        except ConsoleError:
            return {"name": "?", "role": "viewer"}  # the page shows the service's error itself
    return dict(st.session_state["who"])


def may(role: str) -> bool:
    """Whether the signed-in person's role covers `role`: the console hides what it does not."""
    return ROLES.index(who()["role"]) >= ROLES.index(role)


def sign_out_button() -> None:
    me = who()
    st.sidebar.caption(f"Signed in as **{me['name']}** ({me['role']})")
    if "token" in st.session_state and st.sidebar.button("Sign out", key="sign_out"):
        for key in ("token", "who"):
            st.session_state.pop(key, None)
        st.rerun()


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
        st.error(linked(str(exc)), icon=":material/error:")


def split_text(versions: list[dict[str, Any]]) -> str:
    return ", ".join(f"{v['tag']} {v['role']} {v['weight']}%" for v in versions)


def split_rows(versions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": v["tag"], "role": v["role"], "weight %": v["weight"]} for v in versions]
