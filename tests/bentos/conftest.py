"""Fixtures shared by the serving stack's direct tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bentos.controlplane.store import ControlPlane, PostgresControlPlane, SQLiteControlPlane


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ControlPlane:
    if request.param == "sqlite":
        return SQLiteControlPlane(tmp_path / "control.db")
    server = request.getfixturevalue("postgres")
    # A fresh database per test keeps tests independent on the shared server.
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresControlPlane(server.url.rsplit("/", 1)[0] + f"/{name}")
