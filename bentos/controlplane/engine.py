"""The serving engine of one worker: endpoints, the control-plane sync, admin changes.

Every worker polls the control plane for new revisions and applies them itself:
new versions are loaded and warmed first, then traffic switches in one step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from bentos.config import EndpointConfig, config_path, load_config
from bentos.controlplane.offline import LastKnown
from bentos.controlplane.store import (
    ControlPlane,
    EndpointBusy,
    EndpointExists,
    KeyExists,
    Lease,
    Revision,
    RevisionConflict,
    RolloutUpdate,
    StoredEndpoint,
    StoredKey,
    StoreUnavailable,
    open_store,
)
from bentos.dataplane.access import AccessGate, Admission, LiveKey, digest, new_secret
from bentos.dataplane.catalog import check_version, is_validated, list_versions, pick_default
from bentos.dataplane.endpoint import Endpoint
from bentos.dataplane.metrics import get_metrics
from bentos.dataplane.payloads import PayloadLog, tail
from bentos.dataplane.residency import ROLLOUT as ROLLOUT_PIN
from bentos.dataplane.residency import Residency
from bentos.dataplane.runtime import (
    LoadedVersion,
    StoredVersion,
    VersionLoadError,
    available_cores,
    inspect_version,
    load_version,
    resolve_tag,
)
from bentos.dataplane.serving import Serving
from bentos.dataplane.stats import StatsRecorder, bucket_of, summarize
from bentos.errors import Conflict, InvalidChange, NotFound, ServingError, Unavailable
from bentos.schemas import DeploymentRequest, DeploymentSpec, KeyRequest, KeyUpdate, VersionSpec
from bentos.settings import ServeSettings
from bentos.signing import load_trust
from bentos.tasks import load_plugins

log = logging.getLogger("switchyard.engine")

SYSTEM_ACTOR = "switchyard"
# Shared stats older than this are deleted (canary analysis and /stats look back minutes, not days).
STATS_RETENTION_S = 3600
PRUNE_EVERY_FLUSHES = 60
LOAD_SAMPLE_S = 1.0
HEARTBEAT_S = 1.0
FLEET_TTL_S = 5.0
# A request for an endpoint this worker lacks has the control plane looked at, at most this often...
REFRESH_MIN_S = 0.1
# ...and waits at most this long for the look (the database's own timeout bounds the look itself).
LOOK_WAIT_S = 2.0
# An idle worker skips polls while the store is unchanged (SQLite tells by its files), but not longer.
FULL_SYNC_S = 5.0
# A revision this worker could not load is tried again after this long (the cause may be passing).
RETRY_FAILED_S = 5.0
# Reconnecting to an unreachable control plane backs off up to this interval.
RECONNECT_MAX_S = 5.0


class RolloutHook(Protocol):
    """What the engine needs of the rollout controller, which the service wires in."""

    async def run(self) -> None: ...

    def on_manual_change(self, actor: str, action: str) -> RolloutUpdate | None:
        """Written with a change by hand, in its transaction: a running rollout pauses."""
        ...


class Engine:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        # What else this worker listens on, for health (the gRPC server says so when it starts).
        self.listeners: dict[str, dict[str, Any]] = {}
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.threads = settings.parallelism(available_cores())[1]  # per batch; Slot takes the batch count
        self.providers = tuple(settings.providers)
        self.metrics = get_metrics()
        self.stats = StatsRecorder()
        load_plugins(settings.task_modules)
        # A bad file stops the worker here, naming the key (ConfigError).
        self.declared = {e.name: e for e in load_config(config_path(settings.config)).endpoints}
        # Which versions this worker holds in memory, within SWITCHYARD_MODEL_MEMORY (many models).
        self.residency = Residency(settings.memory_budget(), settings.min_resident_s, self._load, self.metrics,
                                   on_measured=self._measured)
        self._repository: set[str] = set()  # endpoints loaded through the model-repository API
        self.endpoints: dict[str, Endpoint] = {name: self._new_endpoint(c) for name, c in self.declared.items()}
        self.store: ControlPlane | None = None
        self.store_error: str | None = None
        self._expected: dict[str, int] = {}
        self._failed: dict[str, tuple[int, float]] = {}  # name -> (revision, monotonic time to retry)
        self._synced = False
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._preview_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._unservable: set[str] = set()
        self._sync_lock = asyncio.Lock()
        self._refreshed_at = 0.0
        self._seen_stamp: Any = None
        self._full_sync_at = 0.0
        self.rollouts: RolloutHook | None = None  # the service wires the controller in
        self.last_known = LastKnown(settings.state_dir)
        self._db_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="control-plane")
        self.gate = AccessGate(settings)
        self.payloads = PayloadLog(settings.payload_log) if settings.payload_log else None
        self.admission = Admission(settings.max_concurrency, settings.max_inflight_bytes)
        self.trust = load_trust()  # the key every version's manifest must be signed with
        self._nudged = asyncio.Event()  # a request asked for an early look
        self._looked = asyncio.Event()  # set when the next look is done (a new one each poll)
        # The data plane's serving path; requests never go through the engine itself.
        self.serving = Serving(self, self.gate, self.admission, self.metrics, self.payloads, settings)

    def _new_endpoint(self, config: EndpointConfig) -> Endpoint:
        endpoint = Endpoint(config, self.settings, self.metrics, self.stats)
        endpoint.residency = self.residency
        endpoint.repository_pinned = config.name in self._repository
        return endpoint

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        await self._connect()
        if self.store is not None:
            await self._first_contact()
            await self.sync()
        else:
            await self._serve_offline()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loop()), loop.create_task(self._flush_loop()),
                       loop.create_task(self._load_loop())]
        if self.settings.db_url is not None:  # a fleet: replicas share one PostgreSQL control plane
            self._tasks.append(loop.create_task(self._fleet_loop()))
        if self.rollouts is not None:
            self._tasks.append(loop.create_task(self.rollouts.run()))

    async def _first_contact(self) -> None:
        await self._ensure_declared()
        await self._sync_endpoints()
        await self._ensure_defaults()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush_stats()
        if self.settings.db_url is not None and self.store is not None:
            with contextlib.suppress(StoreUnavailable):  # else the others find out after FLEET_TTL_S
                await self.db(self.store.leave, self.worker_id)
        for endpoint in self.endpoints.values():
            await endpoint.stop()
        if self.store is not None:
            self.store.close()
        if self.payloads is not None:
            self.payloads.close()

    @property
    def ready(self) -> bool:
        """Synced once, and every endpoint with a deployment serves loaded, warmed versions."""
        return self._synced and all(self.endpoints[name].ready for name in self._expected)

    async def _connect(self) -> None:
        try:
            self.store = await self.db(open_store, self.settings.state_dir,
                                       self.settings.db_url.get_secret_value() if self.settings.db_url else None,
                                       self.settings.db_timeout_s)
            self.store_error = None
        except StoreUnavailable as exc:
            self.store_down(exc)

    def store_down(self, exc: Exception) -> None:
        if self.store_error is None:
            log.warning("control plane unavailable, serving the last known deployment: %s", exc)
        self.store_error = str(exc)

    # --- control-plane sync ------------------------------------------------------------
    async def _ensure_declared(self) -> None:
        """Endpoints from switchyard.yaml go into the control plane, so every replica serves them."""
        assert self.store is not None
        stored = await self.db(self.store.endpoints)
        for name, config in self.declared.items():
            have = stored.get(name)
            if have is not None and have.config == config.model_dump(mode="json"):
                continue
            with contextlib.suppress(EndpointExists):  # another worker or replica got there first
                await self.db(self.store.put_endpoint, name, config.model_dump(mode="json"), source="config",
                                        actor=SYSTEM_ACTOR, action="endpoint-config",
                                        reason=f"declared in {config_path(self.settings.config)}",
                                        create_only=have is None)

    async def _sync_endpoints(self) -> None:
        """Add, replace and retire endpoints to match the control plane (no restart)."""
        assert self.store is not None
        stored: dict[str, StoredEndpoint] = await self.db(self.store.endpoints)
        for name, entry in stored.items():
            current = self.endpoints.get(name)
            if current is not None and current.config.model_dump(mode="json") == entry.config:
                continue
            try:
                config = EndpointConfig.model_validate(entry.config)
            except ValueError as exc:  # a task type this worker lacks (a plug-in not installed here)
                if name not in self._unservable:  # said once, not at every poll
                    log.error("cannot serve endpoint %s: %s", name, str(exc).splitlines()[0])
                    self._unservable.add(name)
                continue
            if current is not None and current.config == config:  # stored before a field with a default existed
                continue
            self.residency.forget(name)
            self.endpoints[name] = self._new_endpoint(config)
            self._unservable.discard(name)
            self._expected.pop(name, None)
            self._failed.pop(name, None)
            if current is not None:  # requests already on it finish there
                self._retire_later(current)
            log.info("endpoint %s (%s) is served", name, config.task)
        for name in [n for n in self.endpoints if n not in stored and n not in self.declared]:
            await self._retire(name)

    async def _retire(self, name: str) -> None:
        endpoint = self.endpoints.pop(name)
        self._expected.pop(name, None)
        self.residency.forget(name)
        self._retire_later(endpoint)
        log.info("endpoint %s was deleted", name)

    def _retire_later(self, endpoint: Endpoint) -> None:
        task = asyncio.get_running_loop().create_task(endpoint.drain())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def sync(self) -> None:
        async with self._sync_lock:  # the poll loop and a request's look must not apply a revision twice
            await self._sync()

    async def _sync(self) -> None:
        assert self.store is not None
        await self._sync_endpoints()
        await self._sync_keys()
        repository = await self._sync_residency()
        revisions = await self.db(self.store.current_revisions)
        self.store_error = None
        due = []
        for name, revision in revisions.items():
            if name not in self.endpoints:
                continue
            self._expected[name] = revision
            if revision != self.endpoints[name].revision and not self._gave_up_on(name, revision):
                due.append(self._apply(name, revision))
        await asyncio.gather(*due)
        for name in repository:
            await self._repin(name)
        self._synced = True
        if due:
            self._remember()

    async def _sync_keys(self) -> None:
        assert self.store is not None
        keys = await self.db(self.store.api_keys)
        self.gate.set_keys([(k.digest, LiveKey(k.name, k.rate, k.burst, frozenset(k.scopes), k.weight))
                            for k in keys if k.revoked_at is None])

    async def _sync_residency(self) -> set[str]:
        """Measured sizes, and which endpoints the repository API loaded; the endpoints whose load changed."""
        assert self.store is not None
        sizes, pinned = await self.db(self.store.residency)
        self.residency.sizes.update(sizes)
        changed = pinned ^ self._repository
        self._repository = pinned
        for name in changed:
            if name in self.endpoints:
                self.endpoints[name].repository_pinned = name in pinned
        return {n for n in changed if n in self.endpoints}

    async def _repin(self, name: str) -> None:
        """The repository API loaded or unloaded `name`: load what is now pinned, unload what is idle."""
        endpoint = self.endpoints[name]
        if endpoint.spec is None:
            return
        if endpoint.repository_pinned:
            try:
                loaded, cold = await self._preload(endpoint, endpoint.spec)
            except VersionLoadError as exc:
                endpoint.load_error = f"repository load: {exc}"
                self._settle(endpoint)
                return
            endpoint.swap(endpoint.revision, endpoint.spec, loaded, cold)
        else:
            self._settle(endpoint)
            self.residency.unload_idle(endpoint)

    def _settle(self, endpoint: Endpoint) -> None:
        """The ledger's pins as the endpoint's deployment says, after a change that did not swap."""
        self.residency.settle(endpoint, endpoint.pins(endpoint.spec) if endpoint.spec else {}, endpoint.slots)

    def _measured(self, tag: str, nbytes: int) -> None:
        """A version's first measured size goes to the control plane (in the background, best effort)."""
        if self.store is None or self.store_error:
            return
        task = asyncio.get_running_loop().create_task(self._store_size(tag, nbytes))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _store_size(self, tag: str, nbytes: int) -> None:
        with contextlib.suppress(StoreUnavailable):
            assert self.store is not None
            await self.db(self.store.put_version_size, tag, nbytes)

    def _gave_up_on(self, name: str, revision: int) -> bool:
        failed = self._failed.get(name)
        return failed is not None and failed[0] == revision and time.monotonic() < failed[1]

    async def _apply(self, name: str, revision: int) -> None:
        assert self.store is not None
        record = await self.db(self.store.get_deployment, name, revision)
        if record is None:
            return
        spec = DeploymentSpec.model_validate(record.spec)
        endpoint = self.endpoints[name]
        try:
            loaded, cold = await self._preload(endpoint, spec)
        except VersionLoadError as exc:
            # Keep serving what we have; try this revision again later, not on every poll.
            self._failed[name] = (revision, time.monotonic() + RETRY_FAILED_S)
            endpoint.load_error = f"revision {revision}: {exc}"
            log.error("cannot apply %s revision %d: %s", name, revision, exc)
            self._settle(endpoint)
            return
        if endpoint.revision > revision:
            # A change made through this worker while we loaded wrote a newer revision: never step back.
            self._settle(endpoint)
            return
        endpoint.swap(revision, spec, loaded, cold)
        log.info("%s now at revision %d: %s", name, revision,
                 ", ".join(f"{v.tag} {v.role} {v.weight}%" for v in spec.versions))

    def _load(self, tag: str, stored: StoredVersion | None = None) -> LoadedVersion:
        return load_version(tag, self.threads, self.providers, self.trust, stored)

    async def _preload(self, endpoint: Endpoint, spec: DeploymentSpec
                       ) -> tuple[dict[str, LoadedVersion], dict[str, StoredVersion]]:
        """What `spec` needs before it serves: its pinned versions loaded and warmed (all of them unless the
        endpoint is on-demand), one at a time through the ledger, which measures each; the others verified and
        described, to load on their first request."""
        missing = endpoint.missing(spec)
        pinned = set(endpoint.resident_in(spec))
        loaded: dict[str, LoadedVersion] = {}
        for tag in [t for t in missing if t in pinned]:
            version = await self.residency.load(endpoint, tag)
            assert version is not None
            loaded[tag] = version
        later = [t for t in missing if t not in pinned]
        described = await asyncio.gather(*(asyncio.to_thread(inspect_version, t, self.trust) for t in later))
        return loaded, dict(zip(later, described, strict=True))

    async def _poll_loop(self) -> None:
        backoff = self.settings.poll_interval_s
        while True:
            if self.store is not None:
                await self._wait_for_poll()
            else:
                await asyncio.sleep(backoff)
            # Requests waiting for a look (`look`) wait for one that starts after they asked: this one.
            look, self._looked = self._looked, asyncio.Event()
            try:
                if self.store is None:
                    # Reconnect with exponential backoff: a database that is down is not hammered by
                    # every worker of every replica four times a second.
                    backoff = min(RECONNECT_MAX_S, backoff * 2)
                    await self._connect()
                    if self.store is not None:
                        backoff = self.settings.poll_interval_s
                        await self._first_contact()
                if self.store is not None and self._store_moved():
                    await self.sync()
            except StoreUnavailable as exc:
                self.store_down(exc)
            except Exception:  # keep polling whatever happens
                log.exception("control-plane sync failed")
            finally:
                look.set()

    async def _wait_for_poll(self) -> None:
        """The poll interval, or less when a request nudged (an endpoint unknown or not ready here), but no
        sooner than REFRESH_MIN_S after the last look: a flood of unknown names costs one look per 0.1 s."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nudged.wait(), self.settings.poll_interval_s)
        await asyncio.sleep(max(0.0, self._refreshed_at + REFRESH_MIN_S - time.monotonic()))
        self._nudged.clear()
        self._refreshed_at = time.monotonic()

    async def look(self) -> None:
        """Serving's Registry: the poll looks at the control plane now instead of at its next interval, and
        the caller waits for that look, at most LOOK_WAIT_S; not at all while the control plane is away."""
        if self.store is None or self.store_error:
            return
        done = self._looked
        self._nudged.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), LOOK_WAIT_S)

    def _store_moved(self) -> bool:
        """Whether a poll must query: the store says something was written since the last look, or it
        cannot say cheaply (Postgres), or the last full look is FULL_SYNC_S old (a safety net)."""
        assert self.store is not None
        stamp, now = self.store.change_stamp(), time.monotonic()
        if stamp is not None and stamp == self._seen_stamp and not self.store_error \
                and now - self._full_sync_at < FULL_SYNC_S:
            return False
        # Taken before the queries, so a write landing during them is seen at the next poll.
        self._seen_stamp, self._full_sync_at = stamp, now
        return True

    async def _fleet_loop(self) -> None:
        """Every HEARTBEAT_S: say this worker is alive and count the fleet's live workers, whose number
        divides each key's rate (a replica that joins or dies is counted within FLEET_TTL_S). While the
        database is away the last share stays: limits fail open at it, never closed on every request."""
        while True:
            if self.store is not None:
                try:
                    self.gate.share_among(await self.db(self.store.heartbeat, self.worker_id, FLEET_TTL_S))
                except StoreUnavailable as exc:
                    self.store_down(exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def _load_loop(self) -> None:
        """Queue depth and in-flight gauges, every LOAD_SAMPLE_S: what autoscalers read."""
        while True:
            for endpoint in self.endpoints.values():
                endpoint.sample_load()
            await asyncio.sleep(LOAD_SAMPLE_S)

    async def _flush_loop(self) -> None:
        flushes = 0
        while True:
            await asyncio.sleep(self.settings.stats_flush_s)
            self.metrics.ready.set(1 if self.ready else 0)
            for endpoint in self.endpoints.values():
                await endpoint.absorb_drift()
                if endpoint.drift.changed:
                    endpoint.drift.changed = False
                    endpoint.export_drift()
            await self.flush_stats()
            flushes += 1
            if flushes % PRUNE_EVERY_FLUSHES == 0:
                await self.prune_stats()

    async def prune_stats(self) -> None:
        """Keep the shared stats table bounded: every worker upserts a row per version every flush."""
        if self.store is None:
            return
        try:
            await self.db(self.store.prune_stats, bucket_of(time.time() - STATS_RETENTION_S))
        except StoreUnavailable as exc:
            self.store_down(exc)

    async def flush_stats(self) -> None:
        rows, agreement = self.stats.pending_rows(), self.stats.pending_agreement()
        classes, divergence = self.stats.pending_classes(), self.stats.pending_divergence()
        guarded = self.stats.pending_guarded()
        if not (rows or agreement or classes or divergence or guarded) or self.store is None:
            return
        try:
            await self.db(self.store.write_stats, self.worker_id, rows, agreement, classes, divergence, guarded)
            self.stats.flushed(rows)
        except StoreUnavailable as exc:
            self.store_down(exc)

    async def _ensure_defaults(self) -> None:
        assert self.store is not None
        existing = await self.db(self.store.current_revisions)
        for name, endpoint in list(self.endpoints.items()):
            if name not in existing:
                await self._first_deployment(endpoint)

    async def _first_deployment(self, endpoint: Endpoint) -> Revision | None:
        """Deploy the endpoint's configured model, or its task's best validated version, at 100 %."""
        assert self.store is not None
        spec = await self._default_spec(endpoint)
        if spec is None:
            return None
        with contextlib.suppress(RevisionConflict):  # another worker or replica got there first
            record: Revision = await self.db(
                self.store.write_deployment, endpoint.name, spec.model_dump(), actor=SYSTEM_ACTOR, action="default",
                reason="first start: the configured or best validated version", expect_revision=0)
            return record
        return None

    async def _default_spec(self, endpoint: Endpoint) -> DeploymentSpec | None:
        config = endpoint.config
        try:
            tag = await asyncio.to_thread(pick_default, config.task, config.model,
                                          self.settings.default_models.get(config.name))
            if tag is not None:
                tag = await asyncio.to_thread(check_version, tag, config.task, config.name,
                                              config.declared_signature())
        except VersionLoadError as exc:
            log.error("default model for %s: %s", config.name, exc)
            return None
        if tag is None:
            log.warning("no validated %s model for endpoint %s in the store; build or import one "
                        "(`python -m models build --all`, `python -m models import`)", config.task, config.name)
            return None
        return DeploymentSpec(versions=[VersionSpec(tag=tag, weight=100, role="stable")])

    # --- without the control plane -------------------------------------------------------
    async def _serve_offline(self) -> None:
        """Started while the control plane is unreachable: serve what this host last applied, or the
        configured defaults, and say so on /v1/health; the poll loop catches up once it is back."""
        known = self.last_known.read()
        for name, config in known["endpoints"].items():
            if name not in self.endpoints:
                with contextlib.suppress(ValueError):
                    self.endpoints[name] = self._new_endpoint(EndpointConfig.model_validate(config))
        for name, endpoint in self.endpoints.items():
            cached = known["deployments"].get(name)
            spec = DeploymentSpec.model_validate(cached["spec"]) if cached else await self._default_spec(endpoint)
            if spec is None:
                continue
            try:
                endpoint.swap(cached["revision"] if cached else 0, spec, *await self._preload(endpoint, spec))
                self._expected[name] = endpoint.revision
            except VersionLoadError as exc:
                endpoint.load_error = f"offline start: {exc}"
        self._synced = True
        log.warning("control plane unreachable at start: serving %s from %s", ", ".join(self._expected) or "nothing",
                    "the last known deployments" if known["deployments"] else "the configured defaults")

    def _remember(self) -> None:
        """What this worker serves now, for a start without the control plane."""
        self.last_known.write({n: e.config.model_dump(mode="json") for n, e in self.endpoints.items()},
                              {n: {"revision": e.revision, "spec": e.spec.model_dump()}
                               for n, e in self.endpoints.items() if e.spec is not None})

    # --- admin operations --------------------------------------------------------------
    async def known_endpoint(self, name: str) -> Endpoint:
        """For admin calls: an endpoint created through another worker a moment ago is looked up at once,
        never refused as unknown because this worker's poll has not come round yet."""
        if name not in self.endpoints and self.store is not None and not self.store_error:
            with contextlib.suppress(StoreUnavailable):
                await self.sync()
        return self.endpoint(name)

    def endpoint(self, name: str) -> Endpoint:
        if name not in self.endpoints:
            raise NotFound(f"unknown endpoint {name!r}; endpoints: {', '.join(sorted(self.endpoints))}")
        return self.endpoints[name]

    async def create_endpoint(self, config: EndpointConfig, actor: str, reason: str) -> dict[str, Any]:
        """Store a new endpoint (audited); every worker and replica serves it within a poll."""
        store = self.require_store()
        if config.model:  # refuse a model that cannot serve here before anything is stored
            try:
                tag = await asyncio.to_thread(pick_default, config.task, config.model)
                if tag is None:
                    raise VersionLoadError(f"no validated {config.task} version matches {config.model!r}")
                await asyncio.to_thread(check_version, tag, config.task, config.name, config.declared_signature())
            except VersionLoadError as exc:
                raise InvalidChange(f"model: {exc}") from None
        try:
            await self.store_call(store.put_endpoint, config.name, config.model_dump(mode="json"), source="api",
                                  actor=actor,
                                  action="endpoint-create", reason=reason, create_only=True)
        except EndpointExists as exc:
            raise Conflict(f"name: {exc}; DELETE /v1/admin/endpoints/{config.name} first to replace it") from None
        await self.sync()  # serve it here at once; the other workers follow within a poll
        await self._first_deployment(self.endpoints[config.name])
        await self.sync()
        return self.endpoint_json(config.name)

    async def delete_endpoint(self, name: str, actor: str, reason: str) -> dict[str, Any]:
        await self.known_endpoint(name)
        if name in self.declared:
            raise Conflict(f"{name} is declared in {config_path(self.settings.config)}: remove it there and restart")
        try:
            gone = await self.store_call(self.require_store().delete_endpoint, name, actor=actor, reason=reason)
        except EndpointBusy as exc:
            raise Conflict(str(exc)) from None
        except KeyError:
            raise NotFound(f"unknown endpoint {name!r}") from None
        await self._retire(name)
        return {"name": name, "deleted": True, "config": gone.config}

    def endpoint_json(self, name: str) -> dict[str, Any]:
        endpoint = self.endpoint(name)
        return {"name": name, **endpoint.config.model_dump(mode="json", exclude={"name"}),
                "source": "config" if name in self.declared else "api", **endpoint.health()}

    def require_store(self) -> ControlPlane:
        if self.store is None or self.store_error:
            raise Unavailable("control plane unavailable; changes are refused until it is back, serving goes on "
                              f"from the last known deployment ({self.store_error or 'not connected'})")
        return self.store

    async def deploy(self, name: str, request: DeploymentRequest, actor: str) -> Revision:
        return await self.change(name, request.spec(), actor, "deploy", request.reason, request.expect_revision)

    async def promote(self, name: str, reason: str, actor: str) -> Revision:
        current = await self.current(name)
        spec = DeploymentSpec.model_validate(current.spec)
        canaries = spec.by_role("canary")
        if len(canaries) != 1:
            raise Conflict(f"promote needs exactly one canary on {name}, found {len(canaries)}")
        versions = [VersionSpec(tag=canaries[0].tag, weight=100, role="stable"), *spec.by_role("shadow")]
        return await self.change(name, spec.model_copy(update={"versions": versions}), actor, "promote",
                                  reason or f"promote {canaries[0].tag}", current.revision)

    async def rollback(self, name: str, revision: int | None, reason: str, actor: str) -> Revision:
        current = await self.current(name)
        target = revision if revision is not None else current.revision - 1
        if not 1 <= target <= current.revision:
            raise InvalidChange(f"revision must be between 1 and {current.revision}, got {target}")
        record = await self.store_call(self.require_store().get_deployment, name, target)
        if record is None:
            raise NotFound(f"{name} has no revision {target}")
        return await self.change(name, DeploymentSpec.model_validate(record.spec), actor, "rollback",
                                  reason or f"roll back to revision {target}", current.revision,
                                  {"to_revision": target})

    async def current(self, name: str) -> Revision:
        """The endpoint's revision as the store has it now (this worker may lag by a poll)."""
        await self.known_endpoint(name)
        record: Revision | None = await self.store_call(self.require_store().get_deployment, name)
        if record is None:
            raise Conflict(f"{name} has no deployment yet")
        return record

    async def check_versions(self, endpoint: Endpoint, tags: list[str], field: str = "versions") -> list[str]:
        """Full tags, each of the endpoint's task and signature (the first sets it when none is known yet)."""
        signature, task, out = endpoint.signature(), endpoint.config.task, []
        for i, tag in enumerate(tags):
            where = f"{field}[{i}].tag" if field == "versions" else field
            try:
                if signature is None:
                    signature = resolve_tag(tag).info.metadata.get("schema")
                out.append(await asyncio.to_thread(check_version, tag, task, endpoint.name, signature))
            except VersionLoadError as exc:
                raise InvalidChange(f"{where}: {exc}") from None
        return out

    async def change(self, name: str, spec: DeploymentSpec, actor: str, action: str, reason: str,
                     expect_revision: int | None, details: dict[str, Any] | None = None,
                     rollout: RolloutUpdate | None = None, fence: Lease | None = None) -> Revision:
        """Write a new revision (audited) and switch this worker to it; the others follow within a poll.
        `rollout` changes the endpoint's rollout state in the same transaction; a change by hand pauses
        a running rollout there too, so no look can slip in between and undo it."""
        endpoint = await self.known_endpoint(name)
        store = self.require_store()
        tags = await self.check_versions(endpoint, [v.tag for v in spec.versions])
        versions = [v.model_copy(update={"tag": t}) for v, t in zip(spec.versions, tags, strict=True)]
        spec = spec.model_copy(update={"versions": versions})
        if rollout is None and self.rollouts is not None:
            rollout = self.rollouts.on_manual_change(actor, action)
        async with self._write_lock:
            try:
                loaded, cold = await self._preload(endpoint, spec)  # before any traffic can reach it
            except VersionLoadError as exc:
                self._settle(endpoint)
                raise InvalidChange(f"refused, traffic stays where it was: {exc}") from None
            try:
                record: Revision = await self.store_call(store.write_deployment, name, spec.model_dump(),
                                                         actor=actor, action=action, reason=reason,
                                                         expect_revision=expect_revision, details=details,
                                                         rollout=rollout, fence=fence)
            except RevisionConflict as exc:
                self._settle(endpoint)
                raise Conflict(f"{exc}; reload and try again") from None
            except BaseException:
                self._settle(endpoint)
                raise
            self._expected[name] = record.revision
            endpoint.swap(record.revision, spec, loaded, cold)
            self._remember()
        return record

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A control-plane call on the store's own threads, given up after SWITCHYARD_DB_TIMEOUT_S: a hung
        database (a stopped server still accepts TCP) must not hang an admin call, nor take threads that
        anything else needs. The thread itself returns when the database does."""
        call = asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(call, self.settings.db_timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"the database did not answer within {self.settings.db_timeout_s:g} s "
                                   "(SWITCHYARD_DB_TIMEOUT_S)") from None

    async def store_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self.db(fn, *args, **kwargs)
        except StoreUnavailable as exc:
            self.store_down(exc)
            raise Unavailable(f"control plane unavailable, change refused: {exc}") from None

    async def preview(self, name: str, version: str) -> str:
        """Load a stored, validated version for pinned use only (playground and OIP pins); its full tag. A
        bare version (Triton clients send only that) is looked up among the stored versions of the
        endpoint's task. Never waits on the control plane: this runs inside a request (Registry). One load
        at a time: visitors pinning at once must not load a model each."""
        endpoint = self.endpoint(name)
        try:
            tag = version if ":" in version else await asyncio.to_thread(_stored_tag, endpoint.task.name, version)
            (full,) = await self.check_versions(endpoint, [tag], "tag")
        except ServingError as exc:
            raise NotFound(f"model {name} has no version {version!r}: {exc.message}") from None
        if full in endpoint.slots or full in endpoint.previews:
            return full
        async with self._preview_lock:
            if full in endpoint.previews:
                return full
            if not await asyncio.to_thread(is_validated, full):
                raise InvalidChange(f"tag: {full} did not pass its accuracy gate; only validated versions can "
                                    "be pinned as previews (deploy it to serve it anyway)")
            endpoint.preview_room(time.monotonic())  # 503 before a load when every slot is in use
            try:
                endpoint.add_preview(await asyncio.to_thread(self._load, full))
            except VersionLoadError as exc:
                raise InvalidChange(str(exc)) from None
        return full

    async def revisions(self, name: str) -> list[dict[str, Any]]:
        await self.known_endpoint(name)
        records = await self.store_call(self.require_store().revisions, name)
        return [r.__dict__ for r in records]

    async def audit(self, endpoint: str | None, limit: int) -> list[dict[str, Any]]:
        return list(await self.store_call(self.require_store().audit, endpoint, limit))

    async def version_stats(self, window_s: float) -> dict[str, Any]:
        await self.flush_stats()
        rows = await self.store_call(self.require_store().read_stats, bucket_of(time.time() - window_s))
        return {"window_s": window_s, "endpoints": summarize(rows)}

    async def drift(self, name: str | None, feature: str | None = None) -> dict[str, Any]:
        """Each endpoint's watched versions: rows seen, PSI and KS per feature, the worst features, and
        prediction drift; from this worker's samples."""
        names = [name] if name else sorted(self.endpoints)
        out = {}
        for endpoint_name in names:
            endpoint = await self.known_endpoint(endpoint_name)
            await endpoint.absorb_drift()
            out[endpoint_name] = endpoint.export_drift(feature)
        return out

    async def payloads_tail(self, endpoint: str | None, version: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest logged exchanges on this host (every worker's files), newest first."""
        if self.payloads is None:
            raise NotFound("payload logging is off: set SWITCHYARD_PAYLOAD_LOG, e.g. "
                           '{"sample": 0.05, "dir": "/var/log/switchyard"}')
        return await asyncio.to_thread(tail, self.payloads.dir, endpoint, version, limit)

    # --- API keys ------------------------------------------------------------------------
    async def keys(self) -> list[dict[str, Any]]:
        return [k.public() for k in await self.store_call(self.require_store().api_keys)]

    async def create_key(self, request: KeyRequest, actor: str) -> dict[str, Any]:
        """A new key; its secret is returned here and never again (the store keeps its digest)."""
        secret = new_secret()
        key = StoredKey(request.name, digest(secret), request.rate, request.burst, list(request.scopes),
                        time.time(), actor, None, request.weight)
        try:
            await self.store_call(self.require_store().create_key, key, reason=request.reason)
        except KeyExists as exc:
            raise Conflict(str(exc)) from None
        await self._resync_keys()
        return {**key.public(), "secret": secret}

    async def update_key(self, name: str, request: KeyUpdate, actor: str, revoke: bool = False) -> dict[str, Any]:
        try:
            key = await self.store_call(self.require_store().update_key, name, request.changes(), actor=actor,
                                        reason=request.reason, revoke=revoke)
        except KeyError:
            raise NotFound(f"no live API key named {name!r}") from None
        await self._resync_keys()
        return dict(key.public())

    async def _resync_keys(self) -> None:
        """This worker sees its own change at once; the others at their next poll."""
        with contextlib.suppress(StoreUnavailable):
            await self._sync_keys()

    async def models(self, task: str | None = None) -> list[dict[str, Any]]:
        """The stored versions, each with its size measured at its first load (None before one)."""
        sizes = self.residency.sizes
        return [{**v, "resident_bytes": sizes.get(v["tag"])} for v in await asyncio.to_thread(list_versions, task)]

    # --- the model repository (Triton's extension) ------------------------------------------
    async def repository_index(self) -> list[dict[str, Any]]:
        """Each endpoint as Triton lists a model: READY when its stable version is loaded in this worker (after a
        look at the control plane, so an endpoint made through another worker a moment ago is listed)."""
        await self.look()
        out = []
        for name, endpoint in sorted(self.endpoints.items()):
            spec = endpoint.spec
            if spec is None:
                out.append({"name": name, "state": "UNAVAILABLE", "reason": "no deployment yet"})
                continue
            loaded = spec.stable.tag in endpoint.slots
            out.append({"name": name, "version": spec.stable.tag.split(":")[-1],
                        "state": "READY" if loaded else "UNAVAILABLE",
                        "reason": "" if loaded else "unloaded (residency: on-demand; it loads on its first request)"})
        return out

    async def repository_load(self, name: str, loaded: bool, actor: str) -> None:
        """Load (and keep loaded) or unload an endpoint's versions: stored, audited, applied here at once and by
        every other worker and replica at its next poll."""
        endpoint = await self.known_endpoint(name)
        if not loaded and not endpoint.on_demand:
            raise InvalidChange(f"{name} has residency: always, so its versions stay loaded; create it with "
                                "residency: on-demand to load and unload it")
        if not loaded and endpoint.spec is not None and ROLLOUT_PIN in endpoint.pins(endpoint.spec)[
                endpoint.spec.stable.tag]:
            raise Conflict(f"{name} has a canary or shadow, whose versions stay loaded until the rollout ends")
        await self.store_call(self.require_store().pin_endpoint, name, loaded, actor=actor,
                              reason=f"repository {'load' if loaded else 'unload'}")
        await self.sync()
        if loaded and endpoint.load_error:
            raise InvalidChange(endpoint.load_error)

    def health(self) -> dict[str, Any]:
        return {"ready": self.ready, "worker": self.worker_id, **self.listeners,
                "control_plane": {"ok": self.store is not None and self.store_error is None,
                                  "error": self.store_error},
                # this worker's part of each key's rate: 1 / the live workers of the fleet (or of this host)
                "rate_share": round(self.gate.share, 6),
                "memory": self.residency.report(),
                "endpoints": {name: e.health() for name, e in self.endpoints.items()}}


def _stored_tag(task: str, version: str) -> str:
    """The stored tag of `task` whose version part is `version`, or `version` itself when none is."""
    return next((v["tag"] for v in list_versions(task) if v["tag"].split(":")[-1] == version), version)
