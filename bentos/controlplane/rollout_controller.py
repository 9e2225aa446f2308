"""The rollout controller: runs in every worker; a lease in the control plane lets exactly one
act per endpoint, across workers and replicas (SQLite or Postgres alike).

At each analysis interval the lease holder reads the shared per-version stats since the
rollout began, asks `rollouts.decide`, changes the deployment when the answer is advance,
rollback or promote, and stores the state. Every change goes to the audit log with its evidence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from bentos.controlplane.rollouts import Decision, RolloutRequest, RolloutState, apply, decide
from bentos.controlplane.store import ControlPlane, Revision, StoreUnavailable
from bentos.dataplane.stats import Counts, bucket_of, merge
from bentos.errors import Conflict, InvalidChange, NotFound
from bentos.schemas import DeploymentSpec, VersionSpec

log = logging.getLogger("switchyard.rollouts")
ACTOR = "rollout-controller"
TICK_S = 0.2
ACTIVE = ("running", "paused")


class Deployments(Protocol):
    """The deployment operations a controller acts through (the engine provides them)."""

    worker_id: str
    store: ControlPlane | None
    store_error: str | None

    def endpoint(self, name: str) -> Any: ...

    async def known_endpoint(self, name: str) -> Any: ...

    def require_store(self) -> ControlPlane: ...

    def store_down(self, exc: Exception) -> None: ...

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def flush_stats(self) -> None: ...

    async def current(self, name: str) -> Revision: ...

    async def check_versions(self, endpoint: Any, tags: list[str], field: str = ...) -> list[str]: ...

    async def change(self, name: str, spec: DeploymentSpec, actor: str, action: str, reason: str,
                     expect_revision: int | None, details: dict[str, Any] | None = None) -> Revision: ...


class RolloutController:
    def __init__(self, engine: Deployments) -> None:
        self.engine = engine

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick()
            except StoreUnavailable as exc:
                self.engine.store_down(exc)
            except Exception:  # keep analysing whatever happens
                log.exception("rollout tick failed")

    def _store(self) -> ControlPlane | None:
        return None if self.engine.store_error else self.engine.store

    async def tick(self) -> None:
        store = self._store()
        if store is None:
            return
        for raw in await asyncio.to_thread(store.rollouts):
            state = RolloutState.model_validate(raw)
            if state.status != "running" or time.time() - state.last_look_at < state.policy.interval_s:
                continue
            ttl = max(3 * state.policy.interval_s, 5.0)
            if not await asyncio.to_thread(store.acquire_lease, f"rollout:{state.endpoint}", self.engine.worker_id,
                                           ttl):
                continue  # another worker or replica holds this endpoint's lease
            fresh = await asyncio.to_thread(store.get_rollout, state.endpoint)  # it may have looked just now
            state = RolloutState.model_validate(fresh)
            if state.status == "running" and time.time() - state.last_look_at >= state.policy.interval_s:
                await self.look(store, state)

    async def look(self, store: ControlPlane, state: RolloutState) -> Decision:
        await self.engine.flush_stats()
        since = bucket_of(state.started_at)
        rows = await asyncio.to_thread(store.read_stats, since, state.endpoint)
        merged = merge(rows)
        canary = merged.get((state.endpoint, state.canary), Counts())
        stable = merged.get((state.endpoint, state.stable), Counts())
        canary.comparisons, canary.agreement_sum = (await asyncio.to_thread(store.read_agreement, since,
                                                                            state.endpoint)).get(state.canary, (0, 0.0))
        now = time.time()
        decision = decide(state, canary, stable, now)
        decision.evidence["controller"] = self.engine.worker_id
        latest = await asyncio.to_thread(store.get_rollout, state.endpoint)
        if latest is None or latest["status"] != "running":  # paused or aborted while this look ran
            return decision
        if decision.action != "hold":
            await self._act(state, decision)
        apply(state, decision, canary.requests, now)
        await asyncio.to_thread(store.put_rollout, state.endpoint, state.model_dump())
        if decision.action != "hold":
            log.info("rollout of %s on %s: %s (%s)", state.canary, state.endpoint, decision.action, decision.reason)
        return decision

    async def _act(self, state: RolloutState, decision: Decision) -> None:
        details = {"rollout": {"canary": state.canary, "stable": state.stable}, "evidence": decision.evidence}
        if decision.action == "advance":
            spec = self._split(state, state.policy.steps[state.step + 1])
        elif decision.action == "promote":
            spec = self._only(state, state.canary)
        else:
            spec = self._only(state, state.stable)
        await self.engine.change(state.endpoint, spec, ACTOR, f"rollout-{decision.action}", decision.reason, None,
                                  details)

    # --- specs ---------------------------------------------------------------------------
    def _kept(self, state: RolloutState) -> tuple[list[VersionSpec], bool]:
        """Shadows and stickiness of the live deployment survive the rollout's changes."""
        spec = self.engine.endpoint(state.endpoint).spec
        shadows = [v for v in spec.by_role("shadow") if v.tag not in (state.canary, state.stable)] if spec else []
        return shadows, bool(spec and spec.sticky)

    def _split(self, state: RolloutState, percent: int) -> DeploymentSpec:
        shadows, sticky = self._kept(state)
        if percent == 0:  # the shadow step: mirrored traffic, compared with stable, never answers
            return DeploymentSpec(versions=[VersionSpec(tag=state.stable, role="stable", weight=100),
                                            VersionSpec(tag=state.canary, role="shadow", weight=0), *shadows],
                                  sticky=sticky)
        return DeploymentSpec(versions=[VersionSpec(tag=state.stable, role="stable", weight=100 - percent),
                                        VersionSpec(tag=state.canary, role="canary", weight=percent), *shadows],
                              sticky=sticky)

    def _only(self, state: RolloutState, tag: str) -> DeploymentSpec:
        shadows, sticky = self._kept(state)
        return DeploymentSpec(versions=[VersionSpec(tag=tag, role="stable", weight=100), *shadows], sticky=sticky)

    # --- admin operations ----------------------------------------------------------------
    async def get(self, endpoint: str) -> RolloutState:
        await self.engine.known_endpoint(endpoint)
        raw = await self.engine.store_call(self.engine.require_store().get_rollout, endpoint)
        if raw is None:
            raise NotFound(f"no rollout on {endpoint} yet: POST /v1/admin/rollouts/{endpoint} starts one")
        return RolloutState.model_validate(raw)

    async def start(self, endpoint: str, request: RolloutRequest, actor: str) -> RolloutState:
        store = self.engine.require_store()
        current = await self.engine.current(endpoint)
        raw = await self.engine.store_call(store.get_rollout, endpoint)
        if raw is not None and raw["status"] in ACTIVE:
            raise Conflict(f"a rollout of {raw['canary']} on {endpoint} is {raw['status']}; abort it first")
        (canary,) = await self.engine.check_versions(await self.engine.known_endpoint(endpoint), [request.tag], "tag")
        stable = DeploymentSpec.model_validate(current.spec).stable.tag
        if canary == stable:
            raise InvalidChange(f"tag: {canary} is already stable on {endpoint}")
        now = time.time()
        state = RolloutState(endpoint=endpoint, canary=canary, stable=stable, policy=request.policy,
                             started_at=now, step_started_at=now, last_look_at=now)
        await self.engine.change(endpoint, self._split(state, state.percent), actor, "rollout-start", request.reason,
                                  current.revision, {"rollout": {"canary": canary, "stable": stable},
                                                     "policy": request.policy.model_dump()})
        state.remember({"action": "start", "reason": request.reason, "actor": actor, "at": now,
                        "step": state.percent})
        await self.engine.store_call(store.put_rollout, endpoint, state.model_dump())
        return state

    async def pause(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        state = await self._active(endpoint, "running")
        return await self._set_status(state, "paused", actor, "rollout-pause", reason or "paused")

    async def resume(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        state = await self._active(endpoint, "paused")
        # A manual change may have moved traffic: put the step's split back, then analyse on.
        await self.engine.change(endpoint, self._split(state, state.percent), actor, "rollout-resume",
                                  reason or "resumed", None, {"rollout": {"canary": state.canary}})
        state.step_started_at = time.time()
        return await self._set_status(state, "running", actor, None, reason or "resumed")

    async def abort(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        state = await self._active(endpoint, *ACTIVE)
        await self.engine.change(endpoint, self._only(state, state.stable), actor, "rollout-abort",
                                  reason or f"abort the rollout of {state.canary}", None,
                                  {"rollout": {"canary": state.canary, "stable": state.stable}})
        return await self._set_status(state, "aborted", actor, None, reason or "aborted")

    async def on_manual_change(self, endpoint: str, actor: str, action: str) -> None:
        """A person changed the deployment by hand: the rollout stops acting until resumed."""
        raw = await self.engine.store_call(self.engine.require_store().get_rollout, endpoint)
        if raw is None or raw["status"] != "running":
            return
        state = RolloutState.model_validate(raw)
        await self._set_status(state, "paused", ACTOR, "rollout-pause",
                               f"paused: manual {action} by {actor}; resume to continue, abort to roll back")

    async def _active(self, endpoint: str, *statuses: str) -> RolloutState:
        state = await self.get(endpoint)
        if state.status not in statuses:
            wanted = " or ".join(statuses)
            raise Conflict(f"the rollout of {state.canary} on {endpoint} is {state.status}, not {wanted}")
        return state

    async def _set_status(self, state: RolloutState, status: Any, actor: str, action: str | None,
                          reason: str) -> RolloutState:
        now = time.time()
        state.status, state.updated_at = status, now
        state.remember({"action": status, "reason": reason, "actor": actor, "at": now, "step": state.percent})
        details = {"rollout": {"canary": state.canary, "step": state.percent}}
        audit = (actor, action, reason, details) if action else None
        await self.engine.store_call(self.engine.require_store().put_rollout, state.endpoint, state.model_dump(),
                                      audit)
        return state
