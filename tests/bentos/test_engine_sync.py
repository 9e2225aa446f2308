"""Two engines on one control plane behave as two workers: what one writes, the other applies,
never steps back from, and never refuses as unknown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bentos.controlplane.engine import Engine
from bentos.controlplane.store import SQLiteControlPlane
from bentos.errors import NotFound
from bentos.settings import ServeSettings

SPEC = {"versions": [{"tag": "m:1", "weight": 100, "role": "stable"}], "sticky": False}


def worker(tmp_path: Path) -> Engine:
    engine = Engine(ServeSettings(state_dir=tmp_path))
    engine.store = SQLiteControlPlane(tmp_path / "control.db")
    return engine


def stored_endpoint(engine: Engine, name: str) -> None:
    assert engine.store is not None
    engine.store.put_endpoint(name, {"name": name, "task": "tensor"}, source="api", actor="alice",
                              action="endpoint-create", reason="test", create_only=True)


async def test_an_endpoint_created_elsewhere_is_known_to_admin_calls_at_once(tmp_path: Path) -> None:
    a, b = worker(tmp_path), worker(tmp_path)
    stored_endpoint(a, "shop")
    with pytest.raises(NotFound):
        b.endpoint("shop")  # b's poll has not come round
    assert (await b.known_endpoint("shop")).name == "shop"
    with pytest.raises(NotFound, match="unknown endpoint 'nope'"):
        await b.known_endpoint("nope")


async def test_a_poll_that_read_an_older_revision_does_not_undo_a_newer_one(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    engine = worker(tmp_path)
    stored_endpoint(engine, "shop")
    await engine.known_endpoint("shop")
    assert engine.store is not None
    engine.store.write_deployment("shop", SPEC, actor="a", action="deploy", reason="1")
    endpoint = engine.endpoints["shop"]
    swapped: list[int] = []

    async def slow_load(_endpoint: Any, _spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        endpoint.revision = 2  # a change through this worker lands while revision 1 loads
        await asyncio.sleep(0)
        return {}, {}

    monkeypatch.setattr(engine, "_preload", slow_load)
    monkeypatch.setattr(endpoint, "swap", lambda revision, *_: swapped.append(revision))
    await engine._apply("shop", 1)
    assert swapped == [] and endpoint.revision == 2
