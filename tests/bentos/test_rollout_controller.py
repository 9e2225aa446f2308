"""The rollout controller's writes against a real store (SQLite and PostgreSQL): a look never undoes a
pause, abort or change by hand that landed while it ran; a controller that lost its lease cannot
write; start and abort leave a consistent state whatever crashes inside them."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bentos.controlplane.rollout_controller import RolloutController, transition
from bentos.controlplane.rollouts import RolloutPolicy, RolloutRequest, RolloutState
from bentos.controlplane.store import ControlPlane, Lease, Revision, RevisionConflict, SQLiteControlPlane
from bentos.dataplane.stats import LATENCY_EDGES_MS, bucket_of
from bentos.errors import Conflict
from bentos.schemas import DeploymentSpec

STABLE, CANARY = "mlp:1", "cnn:1"
ONLY_STABLE = {"versions": [{"tag": STABLE, "weight": 100, "role": "stable"}], "sticky": False}


class Engine:
    """The deployment operations the controller acts through, straight onto the store (no models loaded)."""

    worker_id = "w1"
    store_error = None

    def __init__(self, store: ControlPlane) -> None:
        self.store = store
        self.rollouts: RolloutController | None = None

    async def known_endpoint(self, name: str) -> Any:
        return SimpleNamespace(name=name)

    def require_store(self) -> ControlPlane:
        return self.store

    def store_down(self, exc: Exception) -> None:
        raise exc

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def flush_stats(self) -> None:
        return None

    async def current(self, name: str) -> Revision:
        record = self.store.get_deployment(name)
        assert record is not None
        return record

    async def check_versions(self, endpoint: Any, tags: list[str], field: str = "versions") -> list[str]:
        return tags

    async def change(self, name: str, spec: DeploymentSpec, actor: str, action: str, reason: str,
                     expect_revision: int | None, details: dict[str, Any] | None = None, rollout: Any = None,
                     fence: Lease | None = None) -> Revision:
        if rollout is None and self.rollouts is not None:  # Engine.change's call; the rule is the controller's
            rollout = self.rollouts.on_manual_change(actor, action)
        try:
            return self.store.write_deployment(name, spec.model_dump(), actor=actor, action=action, reason=reason,
                                               expect_revision=expect_revision, details=details, rollout=rollout,
                                               fence=fence)
        except RevisionConflict as exc:
            raise Conflict(str(exc)) from None


@pytest.fixture
def controller(store: ControlPlane) -> RolloutController:
    engine = Engine(store)
    engine.rollouts = RolloutController(engine)  # type: ignore[arg-type]
    store.write_deployment("digits", ONLY_STABLE, actor="a", action="deploy", reason="start")
    return engine.rollouts


async def started(controller: RolloutController) -> RolloutState:
    policy = RolloutPolicy(steps=[20, 50, 100], min_requests=50, min_seconds=0, interval_s=0.5)
    return await controller.start("digits", RolloutRequest(tag=CANARY, policy=policy, reason="go"), "alice")


def traffic(store: ControlPlane, canary: int = 100, stable: int = 400) -> None:
    """Healthy traffic on both, enough for the step's minimums: the next look advances."""
    latency = [0] * (len(LATENCY_EDGES_MS) + 1)
    latency[3] = 1
    store.write_stats("w1", [("digits", CANARY, bucket_of(time.time()), canary, 0, 0, [canary * v for v in latency]),
                             ("digits", STABLE, bucket_of(time.time()), stable, 0, 0, [stable * v for v in latency])])


def split(store: ControlPlane) -> list[tuple[str, int]]:
    record = store.get_deployment("digits")
    assert record is not None
    return [(v["tag"], v["weight"]) for v in record.spec["versions"]]


async def test_a_look_with_nothing_in_its_way_advances(controller: RolloutController, store: ControlPlane) -> None:
    state = await started(controller)
    traffic(store)
    decision = await controller.look(store, state)
    assert decision is not None and decision.action == "advance"
    assert split(store) == [(STABLE, 50), (CANARY, 50)] and store.get_rollout("digits")["step"] == 1


def pause(store: ControlPlane, controller: RolloutController) -> None:
    store.update_rollout("digits", transition("digits", ("running",), "paused", "bob", "wait", "rollout-pause"))


def abort(store: ControlPlane, controller: RolloutController) -> None:
    store.write_deployment("digits", ONLY_STABLE, actor="bob", action="rollout-abort", reason="stop",
                           rollout=transition("digits", ("running", "paused"), "aborted", "bob", "stop", None))


def by_hand(store: ControlPlane, controller: RolloutController) -> None:
    store.write_deployment("digits", ONLY_STABLE, actor="bob", action="deploy", reason="by hand",
                           rollout=controller.on_manual_change("bob", "deploy"))


@pytest.mark.parametrize(("interrupt", "status"), [(pause, "paused"), (abort, "aborted"), (by_hand, "paused")])
async def test_a_pause_abort_or_manual_change_during_a_look_is_never_overwritten(
        controller: RolloutController, store: ControlPlane, monkeypatch: pytest.MonkeyPatch,
        interrupt: Any, status: str) -> None:
    state = await started(controller)
    traffic(store)
    read_stats = store.read_stats

    def read_then_interrupted(*args: Any) -> Any:
        rows = read_stats(*args)
        interrupt(store, controller)  # lands after the look read the state, before it writes
        return rows

    monkeypatch.setattr(store, "read_stats", read_then_interrupted)
    before = split(store) if interrupt is pause else [(STABLE, 100)]
    assert await controller.look(store, state) is None  # the look is dropped
    assert store.get_rollout("digits")["status"] == status and split(store) == before
    assert store.audit("digits")[0]["action"] != "rollout-advance"


async def test_a_controller_whose_lease_expired_cannot_write(controller: RolloutController,
                                                             store: ControlPlane) -> None:
    state = await started(controller)
    traffic(store)
    lease = store.acquire_lease("rollout:digits", "w1", ttl_s=0.1)
    time.sleep(0.2)  # a long GC pause or a slow database
    assert store.acquire_lease("rollout:digits", "w2", ttl_s=30) is not None
    assert await controller.look(store, state, lease) is None
    assert split(store) == [(STABLE, 80), (CANARY, 20)] and store.get_rollout("digits")["looks"] == 0


@pytest.mark.parametrize("step", ["start", "abort"])
async def test_a_crash_inside_start_or_abort_leaves_a_consistent_state_after_restart(
        controller: RolloutController, store: ControlPlane, monkeypatch: pytest.MonkeyPatch, step: str,
        tmp_path: Path) -> None:
    if step == "abort":
        await started(controller)
    before = (split(store), store.get_rollout("digits"))

    def crash(*args: Any) -> Any:
        raise RuntimeError("the worker died here")

    # Between the split's revision and the rollout's state, inside the one transaction.
    monkeypatch.setattr(store, "_update_rollout", crash)
    with pytest.raises(RuntimeError, match="died"):
        if step == "start":
            await started(controller)
        else:
            await controller.abort("digits", "bob", "stop")
    monkeypatch.undo()
    restarted = store if not isinstance(store, SQLiteControlPlane) else SQLiteControlPlane(store.path)
    assert (split(restarted), restarted.get_rollout("digits")) == before


async def test_a_running_rollout_whose_split_lost_its_canary_is_paused_not_advanced(
        controller: RolloutController, store: ControlPlane) -> None:
    state = await started(controller)
    traffic(store)
    store.write_deployment("digits", ONLY_STABLE, actor="old", action="deploy", reason="an older version")
    assert await controller.look(store, store_state(store)) is None
    stored = store.get_rollout("digits")
    assert stored["status"] == "paused" and "no longer carries" in stored["history"][-1]["reason"]
    assert state.canary == CANARY and split(store) == [(STABLE, 100)]


def store_state(store: ControlPlane) -> RolloutState:
    raw = store.get_rollout("digits")
    assert raw is not None
    return RolloutState.model_validate(raw)
