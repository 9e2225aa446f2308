"""The rollout controller: runs in every worker; a lease in the control plane lets exactly one
act per endpoint, across workers and replicas (SQLite or Postgres alike).

At each analysis interval the lease holder reads the shared per-version stats since the
rollout began, asks `rollouts.decide`, and writes its decision: the new split, the rollout's
state and the audit entry with the evidence, in one transaction that also checks
- the rollout's version (a pause, abort or another look since the read wins; the look is dropped),
- the deployment's revision (a change by hand since the read wins), and
- the lease, by the database's clock and its token (a controller that lost it cannot write).
Start, pause, resume and abort are each one transaction too, so no crash leaves a canary
carrying traffic that no rollout watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from bentos.controlplane.rollouts import Decision, RolloutRequest, RolloutState, apply, decide
from bentos.controlplane.store import (
    ControlPlane,
    Fenced,
    Lease,
    Revision,
    RolloutUpdate,
    StaleRollout,
    StoreUnavailable,
)
from bentos.dataplane.stats import Counts, bucket_of, merge
from bentos.errors import Conflict, InvalidChange, NotFound
from bentos.schemas import DeploymentSpec, VersionSpec

log = logging.getLogger("switchyard.rollouts")
ACTOR = "rollout-controller"
TICK_S = 0.2
IDLE_TICK_S = 5.0
ACTIVE = ("running", "paused")


class Deployments(Protocol):
    """The deployment operations a controller acts through (the engine provides them)."""

    worker_id: str
    store: ControlPlane | None
    store_error: str | None

    async def known_endpoint(self, name: str) -> Any: ...

    def require_store(self) -> ControlPlane: ...

    def store_down(self, exc: Exception) -> None: ...

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    async def flush_stats(self) -> None: ...

    async def current(self, name: str) -> Revision: ...

    async def check_versions(self, endpoint: Any, tags: list[str], field: str = ...) -> list[str]: ...

    async def change(self, name: str, spec: DeploymentSpec, actor: str, action: str, reason: str,
                     expect_revision: int | None, details: dict[str, Any] | None = None,
                     rollout: RolloutUpdate | None = None, fence: Lease | None = None) -> Revision: ...


def expecting(version: int, state: RolloutState, audit: tuple[str, str, str, Any] | None = None) -> RolloutUpdate:
    """Write `state` only if the stored rollout is still at `version` (what this writer read)."""
    new = state.model_dump()

    def update(stored: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        if stored is None or int(stored.get("version", 0)) != version:
            raise StaleRollout(f"the rollout on {state.endpoint} changed since it was read")
        return new, audit

    return update


def transition(endpoint: str, wanted: tuple[str, ...], status: str, actor: str, reason: str,
               action: str | None, step_restarts: bool = False) -> RolloutUpdate:
    """Move the stored rollout (whatever its version now) from one of `wanted` to `status`."""

    def update(stored: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
        if stored is None:
            raise NotFound(f"no rollout on {endpoint} yet: POST /v1/admin/rollouts/{endpoint} starts one")
        state = RolloutState.model_validate(stored)
        if state.status not in wanted:
            raise Conflict(f"the rollout of {state.canary} on {endpoint} is {state.status}, "
                           f"not {' or '.join(wanted)}")
        now = time.time()
        state.status, state.updated_at = status, now  # type: ignore[assignment]
        if step_restarts:
            state.step_started_at = now
        state.remember({"action": status, "reason": reason, "actor": actor, "at": now, "step": state.percent})
        audit = (actor, action, reason, {"rollout": {"canary": state.canary, "step": state.percent}}) \
            if action else None
        return state.model_dump(), audit

    return update


class RolloutController:
    def __init__(self, engine: Deployments) -> None:
        self.engine = engine
        self._running = True  # until the first tick has looked
        self._stamp: Any = None
        self._ticked_at = 0.0

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

    def _worth_a_look(self, store: ControlPlane) -> bool:
        """With no rollout running, a tick only reads the store when it changed (or every IDLE_TICK_S):
        an idle service does no queries five times a second."""
        stamp, now = store.change_stamp(), time.monotonic()
        if not self._running and stamp is not None and stamp == self._stamp and now - self._ticked_at < IDLE_TICK_S:
            return False
        self._stamp, self._ticked_at = stamp, now
        return True

    def _store(self) -> ControlPlane | None:
        return None if self.engine.store_error else self.engine.store

    async def tick(self) -> None:
        store = self._store()
        if store is None or not self._worth_a_look(store):
            return
        rollouts = await self.engine.db(store.rollouts)
        self._running = any(raw.get("status") == "running" for raw in rollouts)
        for raw in rollouts:
            state = RolloutState.model_validate(raw)
            if state.status != "running" or time.time() - state.last_look_at < state.policy.interval_s:
                continue
            ttl = max(3 * state.policy.interval_s, 5.0)
            lease = await self.engine.db(store.acquire_lease, f"rollout:{state.endpoint}",
                                            self.engine.worker_id, ttl)
            if lease is None:
                continue  # another worker or replica holds this endpoint's lease
            fresh = await self.engine.db(store.get_rollout, state.endpoint)  # it may have looked just now
            if fresh is None:
                continue
            state = RolloutState.model_validate(fresh)
            if state.status == "running" and time.time() - state.last_look_at >= state.policy.interval_s:
                await self.look(store, state, lease)

    async def look(self, store: ControlPlane, state: RolloutState, lease: Lease | None = None) -> Decision | None:
        """One analysis, written atomically; None when the write lost to a newer change (it is dropped)."""
        read_version = state.version
        current = await self.engine.current(state.endpoint)  # the store's split, not this worker's view
        if state.canary not in {v["tag"] for v in current.spec["versions"]}:
            await self._resolve_half_done(store, state, read_version, lease)
            return None
        await self.engine.flush_stats()
        since = bucket_of(state.started_at)
        rows = await self.engine.db(store.read_stats, since, state.endpoint)
        merged = merge(rows)
        canary = merged.get((state.endpoint, state.canary), Counts())
        stable = merged.get((state.endpoint, state.stable), Counts())
        canary.comparisons, canary.agreement_sum = (await self.engine.db(store.read_agreement, since,
                                                                            state.endpoint)).get(state.canary, (0, 0.0))
        if "divergence" in state.policy.checks:
            canary.scored, canary.kl_sum, canary.log_ratio_sum = (await self.engine.db(
                store.read_divergence, since, state.endpoint)).get(state.canary, (0, 0.0, 0.0))
        if "violations" in state.policy.checks:
            guarded = await self.engine.db(store.read_guarded, since, state.endpoint)
            canary.guarded, canary.cut = guarded.get(state.canary, (0, 0))
            stable.guarded, stable.cut = guarded.get(state.stable, (0, 0))
        if "drift" in state.policy.checks:
            classes = await self.engine.db(store.read_classes, since, state.endpoint)
            canary.classes, stable.classes = classes.get(state.canary, []), classes.get(state.stable, [])
        now = time.time()
        decision = decide(state, canary, stable, now)
        decision.evidence["controller"] = self.engine.worker_id
        target = None if decision.action == "hold" else self._target(state, decision, current)
        apply(state, decision, canary.requests, now)
        try:
            if target is None:
                await self.engine.store_call(store.update_rollout, state.endpoint, expecting(read_version, state),
                                             lease)
            else:
                details = {"rollout": {"canary": state.canary, "stable": state.stable},
                           "evidence": decision.evidence}
                await self.engine.change(state.endpoint, target, ACTOR, f"rollout-{decision.action}",
                                         decision.reason, current.revision, details,
                                         rollout=expecting(read_version, state), fence=lease)
        except (StaleRollout, Fenced, Conflict) as exc:
            log.info("look at %s on %s dropped: %s", state.canary, state.endpoint, exc)
            return None
        if decision.action != "hold":
            log.info("rollout of %s on %s: %s (%s)", state.canary, state.endpoint, decision.action, decision.reason)
        return decision

    async def _resolve_half_done(self, store: ControlPlane, state: RolloutState, version: int,
                                 lease: Lease | None) -> None:
        """A running rollout whose canary the split no longer carries (a store written by an older
        Switchyard, or by hand): stop acting and say so, rather than advance a split nobody routes."""
        reason = f"paused: the deployment no longer carries {state.canary}; resume to put it back, abort to end"
        now = time.time()
        state.status, state.updated_at = "paused", now
        state.remember({"action": "paused", "reason": reason, "actor": ACTOR, "at": now, "step": state.percent})
        audit = (ACTOR, "rollout-pause", reason, {"rollout": {"canary": state.canary}})
        with contextlib.suppress(StaleRollout, Fenced):
            await self.engine.store_call(store.update_rollout, state.endpoint, expecting(version, state, audit),
                                         lease)

    def _target(self, state: RolloutState, decision: Decision, current: Revision) -> DeploymentSpec:
        if decision.action == "advance":
            return self._split(state, state.policy.steps[state.step + 1], current)
        return self._only(state, state.canary if decision.action == "promote" else state.stable, current)

    # --- specs ---------------------------------------------------------------------------
    def _kept(self, state: RolloutState, current: Revision) -> tuple[list[VersionSpec], dict[str, Any]]:
        """Shadows, stickiness and the shadow sample of the stored deployment survive the rollout's changes."""
        spec = DeploymentSpec.model_validate(current.spec)
        shadows = [v for v in spec.by_role("shadow") if v.tag not in (state.canary, state.stable)]
        return shadows, {"sticky": spec.sticky, "shadow_sample": spec.shadow_sample}

    def _split(self, state: RolloutState, percent: int, current: Revision) -> DeploymentSpec:
        shadows, kept = self._kept(state, current)
        if percent == 0:  # the shadow step: mirrored traffic, compared with stable, never answers
            return DeploymentSpec(versions=[VersionSpec(tag=state.stable, role="stable", weight=100),
                                            VersionSpec(tag=state.canary, role="shadow", weight=0), *shadows],
                                  **kept)
        return DeploymentSpec(versions=[VersionSpec(tag=state.stable, role="stable", weight=100 - percent),
                                        VersionSpec(tag=state.canary, role="canary", weight=percent), *shadows],
                              **kept)

    def _only(self, state: RolloutState, tag: str, current: Revision) -> DeploymentSpec:
        shadows, kept = self._kept(state, current)
        return DeploymentSpec(versions=[VersionSpec(tag=tag, role="stable", weight=100), *shadows], **kept)

    # --- admin operations ----------------------------------------------------------------
    async def get(self, endpoint: str) -> RolloutState:
        await self.engine.known_endpoint(endpoint)
        raw = await self.engine.store_call(self.engine.require_store().get_rollout, endpoint)
        if raw is None:
            raise NotFound(f"no rollout on {endpoint} yet: POST /v1/admin/rollouts/{endpoint} starts one")
        return RolloutState.model_validate(raw)

    async def start(self, endpoint: str, request: RolloutRequest, actor: str) -> RolloutState:
        current = await self.engine.current(endpoint)
        known = await self.engine.known_endpoint(endpoint)
        if "drift" in request.policy.checks and not known.task.classifies():
            # It would wait for predicted classes for ever: a step holds until each check has its evidence.
            raise InvalidChange(f"policy.checks: drift compares predicted classes, and {endpoint} is a "
                                f"{known.task.name} endpoint; use agreement")
        if "divergence" in request.policy.checks and known.task.execution != "decode":
            raise InvalidChange(f"policy.checks: divergence compares next-token distributions, and {endpoint} is "
                                f"a {known.task.name} endpoint; use agreement")
        if "violations" in request.policy.checks and not (known.config.guardrails and known.config.guardrails.output):
            raise InvalidChange(f"policy.checks: violations compares the streams output guardrails cut, and "
                                f"{endpoint} has no output guardrails (its guardrails.output)")
        (canary,) = await self.engine.check_versions(known, [request.tag], "tag")
        stable = DeploymentSpec.model_validate(current.spec).stable.tag
        if canary == stable:
            raise InvalidChange(f"tag: {canary} is already stable on {endpoint}")
        now = time.time()
        state = RolloutState(endpoint=endpoint, canary=canary, stable=stable, policy=request.policy,
                             started_at=now, step_started_at=now, last_look_at=now)
        state.remember({"action": "start", "reason": request.reason, "actor": actor, "at": now,
                        "step": state.percent})

        def begin(stored: dict[str, Any] | None) -> tuple[dict[str, Any], None]:
            if stored is not None and stored["status"] in ACTIVE:
                raise Conflict(f"a rollout of {stored['canary']} on {endpoint} is {stored['status']}; abort it first")
            return state.model_dump(), None  # the deployment's audit entry (rollout-start) records it

        # The split and the rollout that watches it land together, or neither does.
        await self.engine.change(endpoint, self._split(state, state.percent, current), actor, "rollout-start",
                                  request.reason, current.revision, {"rollout": {"canary": canary, "stable": stable},
                                                                     "policy": request.policy.model_dump()},
                                  rollout=begin)
        return await self.get(endpoint)

    async def pause(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        await self.get(endpoint)
        update = transition(endpoint, ("running",), "paused", actor, reason or "paused", "rollout-pause")
        await self.engine.store_call(self.engine.require_store().update_rollout, endpoint, update)
        return await self.get(endpoint)

    async def resume(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        state = await self._active(endpoint, "paused")
        current = await self.engine.current(endpoint)
        # A manual change may have moved traffic: put the step's split back, then analyse on.
        await self.engine.change(endpoint, self._split(state, state.percent, current), actor, "rollout-resume",
                                  reason or "resumed", current.revision, {"rollout": {"canary": state.canary}},
                                  rollout=transition(endpoint, ("paused",), "running", actor, reason or "resumed",
                                                     None, step_restarts=True))
        return await self.get(endpoint)

    async def abort(self, endpoint: str, actor: str, reason: str) -> RolloutState:
        state = await self._active(endpoint, *ACTIVE)
        current = await self.engine.current(endpoint)
        # Traffic back to stable and the rollout's end in one transaction: no later look can revive it.
        await self.engine.change(endpoint, self._only(state, state.stable, current), actor, "rollout-abort",
                                  reason or f"abort the rollout of {state.canary}", None,
                                  {"rollout": {"canary": state.canary, "stable": state.stable}},
                                  rollout=transition(endpoint, ACTIVE, "aborted", actor, reason or "aborted", None))
        return await self.get(endpoint)

    def on_manual_change(self, actor: str, action: str) -> RolloutUpdate | None:
        """What a deployment change does to the endpoint's rollout, in the same transaction: one by hand
        (deploy, promote, rollback) pauses a running rollout; the rollout's own changes leave it alone."""
        if action.startswith("rollout-"):
            return None

        def update(stored: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
            if stored is None or stored.get("status") != "running":
                return None, None
            reason = f"paused: manual {action} by {actor}; resume to continue, abort to roll back"
            return transition(stored["endpoint"], ("running",), "paused", ACTOR, reason, "rollout-pause")(stored)

        return update

    async def _active(self, endpoint: str, *statuses: str) -> RolloutState:
        state = await self.get(endpoint)
        if state.status not in statuses:
            wanted = " or ".join(statuses)
            raise Conflict(f"the rollout of {state.canary} on {endpoint} is {state.status}, not {wanted}")
        return state
