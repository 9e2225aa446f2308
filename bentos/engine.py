"""The serving engine of one worker: endpoints, the control-plane sync, admin changes.

Every worker polls the control plane for new revisions and applies them itself:
new versions are loaded and warmed first, then traffic switches in one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

from bentos.catalog import check_tag, list_versions, pick_default
from bentos.endpoint import Endpoint
from bentos.metrics import get_metrics
from bentos.rollout_controller import RolloutController
from bentos.runtime import LoadedVersion, VersionLoadError, load_version
from bentos.schemas import DeploymentRequest, DeploymentSpec, VersionSpec
from bentos.settings import ServeSettings
from bentos.stats import StatsRecorder, bucket_of, summarize
from bentos.store import ControlPlane, Revision, RevisionConflict, StoreUnavailable, open_store

log = logging.getLogger("switchyard.engine")

# Endpoint name -> the model family it serves.
ENDPOINTS = {"digits": "digits", "minilm": "minilm"}
SYSTEM_ACTOR = "switchyard"
# Shared stats older than this are deleted (canary analysis and /stats look back minutes, not days).
STATS_RETENTION_S = 3600
PRUNE_EVERY_FLUSHES = 60


class AdminError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidChange(AdminError):
    status = 422


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class Unavailable(AdminError):
    status = 503


class Engine:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.threads = settings.intra_op_threads(os.cpu_count() or 1)
        self.providers = tuple(settings.providers)
        self.metrics = get_metrics()
        self.stats = StatsRecorder()
        self.endpoints = {name: Endpoint(name, settings, self.metrics, self.stats) for name in ENDPOINTS}
        self.store: ControlPlane | None = None
        self.store_error: str | None = None
        self._expected: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._synced = False
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self.rollouts = RolloutController(self)

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await self._connect()
        if self.store is not None:
            await self._ensure_defaults()
            await self.sync()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._flush_loop()),
                       loop.create_task(self.rollouts.run())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush_stats()
        for endpoint in self.endpoints.values():
            await endpoint.stop()
        if self.store is not None:
            self.store.close()

    @property
    def ready(self) -> bool:
        """Synced once, and every endpoint with a deployment serves loaded, warmed versions."""
        return self._synced and all(self.endpoints[name].ready for name in self._expected)

    async def _connect(self) -> None:
        try:
            self.store = await asyncio.to_thread(open_store, self.settings.state_dir,
                                                 self.settings.db_url.get_secret_value()
                                                 if self.settings.db_url else None)
            self.store_error = None
        except StoreUnavailable as exc:
            self._store_down(exc)

    def _store_down(self, exc: Exception) -> None:
        if self.store_error is None:
            log.warning("control plane unavailable, serving the last known deployment: %s", exc)
        self.store_error = str(exc)

    # --- control-plane sync ------------------------------------------------------------
    async def sync(self) -> None:
        assert self.store is not None
        revisions = await asyncio.to_thread(self.store.current_revisions)
        self.store_error = None
        for name, revision in revisions.items():
            if name not in self.endpoints:
                continue
            self._expected[name] = revision
            endpoint = self.endpoints[name]
            if revision != endpoint.revision and self._failed.get(name) != revision:
                await self._apply(name, revision)
        self._synced = True

    async def _apply(self, name: str, revision: int) -> None:
        assert self.store is not None
        record = await asyncio.to_thread(self.store.get_deployment, name, revision)
        if record is None:
            return
        spec = DeploymentSpec.model_validate(record.spec)
        endpoint = self.endpoints[name]
        try:
            loaded = await self._preload(endpoint, spec)
        except VersionLoadError as exc:
            # Keep serving what we have; do not retry this revision on every poll.
            self._failed[name] = revision
            endpoint.load_error = f"revision {revision}: {exc}"
            log.error("cannot apply %s revision %d: %s", name, revision, exc)
            return
        endpoint.swap(revision, spec, loaded)
        log.info("%s now at revision %d: %s", name, revision,
                 ", ".join(f"{v.tag} {v.role} {v.weight}%" for v in spec.versions))

    async def _preload(self, endpoint: Endpoint, spec: DeploymentSpec) -> dict[str, LoadedVersion]:
        loaded = {}
        for tag in endpoint.missing(spec):
            loaded[tag] = await asyncio.to_thread(load_version, tag, self.threads, self.providers)
        return loaded

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                if self.store is None:
                    await self._connect()
                    if self.store is not None:
                        await self._ensure_defaults()
                if self.store is not None:
                    await self.sync()
            except StoreUnavailable as exc:
                self._store_down(exc)
            except Exception:  # keep polling whatever happens
                log.exception("control-plane sync failed")

    async def _flush_loop(self) -> None:
        flushes = 0
        while True:
            await asyncio.sleep(self.settings.stats_flush_s)
            self.metrics.ready.set(1 if self.ready else 0)
            await self._flush_stats()
            flushes += 1
            if flushes % PRUNE_EVERY_FLUSHES == 0:
                await self.prune_stats()

    async def prune_stats(self) -> None:
        """Keep the shared stats table bounded: every worker upserts a row per version every flush."""
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.prune_stats, bucket_of(time.time() - STATS_RETENTION_S))
        except StoreUnavailable as exc:
            self._store_down(exc)

    async def _flush_stats(self) -> None:
        rows, agreement = self.stats.pending_rows(), self.stats.pending_agreement()
        if not (rows or agreement) or self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.write_stats, self.worker_id, rows, agreement)
            self.stats.flushed(rows)
        except StoreUnavailable as exc:
            self._store_down(exc)

    async def _ensure_defaults(self) -> None:
        assert self.store is not None
        existing = await asyncio.to_thread(self.store.current_revisions)
        for name, family in ENDPOINTS.items():
            if name in existing:
                continue
            try:
                tag = await asyncio.to_thread(pick_default, family, self.settings.default_models.get(name))
            except VersionLoadError as exc:
                log.error("default model for %s: %s", name, exc)
                continue
            if tag is None:
                log.warning("no validated %s model in the store; run `python -m models build --all`", family)
                continue
            spec = DeploymentSpec(versions=[VersionSpec(tag=tag, weight=100, role="stable")])
            with contextlib.suppress(RevisionConflict):  # another worker or replica got there first
                await asyncio.to_thread(self.store.write_deployment, name, spec.model_dump(), actor=SYSTEM_ACTOR,
                                        action="default", reason="first start: best validated variant",
                                        expect_revision=0)

    # --- admin operations --------------------------------------------------------------
    def endpoint(self, name: str) -> Endpoint:
        if name not in self.endpoints:
            raise NotFound(f"unknown endpoint {name!r}; endpoints: {', '.join(self.endpoints)}")
        return self.endpoints[name]

    def _require_store(self) -> ControlPlane:
        if self.store is None or self.store_error:
            raise Unavailable("control plane unavailable; changes are refused until it is back, serving goes on "
                              f"from the last known deployment ({self.store_error or 'not connected'})")
        return self.store

    async def deploy(self, name: str, request: DeploymentRequest, actor: str) -> Revision:
        return await self._change(name, request.spec(), actor, "deploy", request.reason, request.expect_revision)

    async def promote(self, name: str, reason: str, actor: str) -> Revision:
        current = await self._current(name)
        spec = DeploymentSpec.model_validate(current.spec)
        canaries = spec.by_role("canary")
        if len(canaries) != 1:
            raise Conflict(f"promote needs exactly one canary on {name}, found {len(canaries)}")
        versions = [VersionSpec(tag=canaries[0].tag, weight=100, role="stable"), *spec.by_role("shadow")]
        return await self._change(name, DeploymentSpec(versions=versions, sticky=spec.sticky), actor, "promote",
                                  reason or f"promote {canaries[0].tag}", current.revision)

    async def rollback(self, name: str, revision: int | None, reason: str, actor: str) -> Revision:
        current = await self._current(name)
        target = revision if revision is not None else current.revision - 1
        if not 1 <= target <= current.revision:
            raise InvalidChange(f"revision must be between 1 and {current.revision}, got {target}")
        record = await self._store_call(self._require_store().get_deployment, name, target)
        if record is None:
            raise NotFound(f"{name} has no revision {target}")
        return await self._change(name, DeploymentSpec.model_validate(record.spec), actor, "rollback",
                                  reason or f"roll back to revision {target}", current.revision,
                                  {"to_revision": target})

    async def _current(self, name: str) -> Revision:
        """The endpoint's revision as the store has it now (this worker may lag by a poll)."""
        self.endpoint(name)
        record: Revision | None = await self._store_call(self._require_store().get_deployment, name)
        if record is None:
            raise Conflict(f"{name} has no deployment yet")
        return record

    async def _change(self, name: str, spec: DeploymentSpec, actor: str, action: str, reason: str,
                      expect_revision: int | None, details: dict[str, Any] | None = None) -> Revision:
        endpoint = self.endpoint(name)
        store = self._require_store()
        family = ENDPOINTS[name]
        versions = []
        for i, version in enumerate(spec.versions):
            try:
                tag = await asyncio.to_thread(check_tag, version.tag, family)
            except VersionLoadError as exc:
                raise InvalidChange(f"versions[{i}].tag: {exc}") from None
            versions.append(version.model_copy(update={"tag": tag}))
        spec = DeploymentSpec(versions=versions, sticky=spec.sticky)
        async with self._write_lock:
            try:
                loaded = await self._preload(endpoint, spec)  # before any traffic can reach it
            except VersionLoadError as exc:
                raise InvalidChange(f"refused, traffic stays where it was: {exc}") from None
            try:
                record: Revision = await self._store_call(store.write_deployment, name, spec.model_dump(),
                                                          actor=actor, action=action, reason=reason,
                                                          expect_revision=expect_revision, details=details)
            except RevisionConflict as exc:
                raise Conflict(f"{exc}; reload and try again") from None
            self._expected[name] = record.revision
            endpoint.swap(record.revision, spec, loaded)
        if not action.startswith("rollout-"):  # a change by hand pauses a running rollout
            await self.rollouts.on_manual_change(name, actor, action)
        return record

    async def _store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self._store_down(exc)
            raise Unavailable(f"control plane unavailable, change refused: {exc}") from None

    async def preview(self, name: str, tag: str) -> str:
        """Load a stored version for pinned use only (the playground); returns its full tag."""
        endpoint = self.endpoint(name)
        try:
            full = await asyncio.to_thread(check_tag, tag, ENDPOINTS[name])
            if full not in endpoint.slots and full not in endpoint.previews:
                endpoint.add_preview(await asyncio.to_thread(load_version, full, self.threads, self.providers))
        except VersionLoadError as exc:
            raise InvalidChange(str(exc)) from None
        return full

    async def revisions(self, name: str) -> list[dict[str, Any]]:
        self.endpoint(name)
        records = await self._store_call(self._require_store().revisions, name)
        return [r.__dict__ for r in records]

    async def audit(self, endpoint: str | None, limit: int) -> list[dict[str, Any]]:
        return list(await self._store_call(self._require_store().audit, endpoint, limit))

    async def version_stats(self, window_s: float) -> dict[str, Any]:
        await self._flush_stats()
        rows = await self._store_call(self._require_store().read_stats, bucket_of(time.time() - window_s))
        return {"window_s": window_s, "endpoints": summarize(rows)}

    async def models(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(list_versions)

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "worker": self.worker_id,
                "control_plane": {"ok": self.store is not None and self.store_error is None,
                                  "error": self.store_error},
                "endpoints": {name: e.health() for name, e in self.endpoints.items()}}
