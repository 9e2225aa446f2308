"""One endpoint in one worker: its config, its live versions and the request path.

A request is routed to a version, queued on that version's batcher, and answered;
a failing or circuit-open non-stable version falls back to stable, and shadow versions
get a fire-and-forget copy whose answers are compared, never returned.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from bentos.config import EndpointConfig
from bentos.dataplane.batching import AdaptiveBatcher, Timing
from bentos.dataplane.cache import PredictionCache, input_key
from bentos.dataplane.call import Call
from bentos.dataplane.circuit import CircuitBreaker, CircuitPolicy, State
from bentos.dataplane.decode.loop import DecodeLoop, decode_loop
from bentos.dataplane.decode.scheduler import PRIORITIES
from bentos.dataplane.decode.verdict import token_verdict
from bentos.dataplane.drift import DriftMonitor, features_of
from bentos.dataplane.generation import Generation
from bentos.dataplane.metrics import Metrics, VersionSeries
from bentos.dataplane.residency import ALWAYS, REPOSITORY, ROLLOUT, Entry, Residency
from bentos.dataplane.routing import Router
from bentos.dataplane.runtime import LoadedVersion, StoredVersion, available_cores
from bentos.dataplane.slot_queue import ForwardQueue, SlotQueue
from bentos.dataplane.stats import StatsRecorder
from bentos.dataplane.tracing import batch_spans, current, now_ns, recording, span, stream_spans
from bentos.errors import (
    CALLERS_FAULT,
    ModelFailure,
    NoDeployment,
    NotFound,
    Overloaded,
    RateLimited,
    ServingError,
    TooBusy,
)
from bentos.request_context import request_id
from bentos.schemas import DeploymentSpec
from bentos.settings import ServeSettings
from bentos.tasks import Codec, Limits, Task, get_task
from bentos.tasks.text_generation import AGREEMENT_TOKENS, GenerationCodec, SamplingParams

log = logging.getLogger("switchyard.endpoint")
# Pinned previews (stored versions loaded for pins only): at most this many per endpoint, and one is
# evicted only after this long unused, so that previews cannot thrash (load, evict, load again).
PREVIEW_SLOTS = 4
PREVIEW_MIN_IDLE_S = 60.0
DIRECT = Call()  # a call with no caller: in-process users and tests


def priority_of(params: SamplingParams, call: Call) -> int:
    """The class a generation runs in: what it asked for, "high" only with a key's 'priority' scope. Callers
    without a key are one tenant ("") and share its fair share."""
    asked = PRIORITIES[params.priority]
    return asked if call.may_prioritize or asked <= PRIORITIES["normal"] else PRIORITIES["normal"]
__all__ = ["DIRECT", "Answer", "Endpoint", "ModelFailure", "NoDeployment", "Pick", "Slot"]


@dataclass(frozen=True)
class Answer:
    outputs: list[Any]
    version: str
    route: str
    timing: Timing
    total_s: float
    codec: Codec


@dataclass(frozen=True, slots=True)
class Pick:
    """Where one request goes, decided before it runs and settled after it: the version, its route, and
    the half-open breaker's probe it holds (released on every path)."""

    router: Router
    slot: Slot
    tag: str
    route: str
    start: float
    probe: Slot | None = None
    hold: Entry | None = None  # an on-demand version is not unloaded while a request holds it


class Slot:
    """A live version in this worker: model, queue and circuit breaker."""

    def __init__(self, version: LoadedVersion, settings: ServeSettings, policy: CircuitPolicy,
                 series: VersionSeries, limits: Limits) -> None:
        self.version, self.series = version, series
        self.circuit = CircuitBreaker(policy)
        # Token by token (text-generation): the decode loop is the queue; there is no one-forward path.
        self.decode: DecodeLoop | None = None
        if version.execution == "decode":
            self.decode = decode_loop(version, settings, limits, series)
            self.queue: SlotQueue = self.decode
            self.forward: ForwardQueue | None = None
            return
        batcher = AdaptiveBatcher(version.run, max_batch_size=settings.max_batch_size,
                                  max_queue=settings.max_queue, max_wait_s=settings.max_wait_ms / 1000,
                                  name=f"batch-{version.tag}", in_flight=settings.parallelism(available_cores())[0])
        self.queue = batcher
        # The one-forward path's view of the queue; None for an execution mode without `submit`.
        self.forward = batcher

    async def drain_and_stop(self, grace_s: float = 30.0) -> None:
        """Let queued requests, and the batch in the model, finish before the version goes away."""
        await self.queue.drain_and_stop(grace_s)


CHARS_PER_PROMPT_TOKEN = 8  # a BPE token is rarely longer: the character cap never refuses what the token cap allows


def effective_limits(config: EndpointConfig, settings: ServeSettings) -> Limits:
    own = config.limits
    max_chars = own.max_chars or settings.max_chars
    if config.task == "text-generation" and not own.max_chars:
        # A prompt is bounded by its tokens (the 422 that names max_prompt_tokens), not by a text task's
        # characters: 2,000 characters refused a 500-token prompt that the token cap allows.
        max_chars = max(max_chars, CHARS_PER_PROMPT_TOKEN * (own.max_prompt_tokens or settings.max_prompt_tokens))
    return Limits(max_rows=own.max_rows or settings.max_rows, max_chars=max_chars,
                  max_body_bytes=own.max_body_bytes or settings.max_body_bytes,
                  max_image_pixels=own.max_image_pixels or settings.max_image_pixels,
                  max_request_pixels=own.max_request_pixels or settings.max_request_pixels,
                  body_timeout_s=own.body_timeout_s or settings.body_timeout_s,
                  max_prompt_tokens=own.max_prompt_tokens or settings.max_prompt_tokens,
                  max_new_tokens=own.max_new_tokens or settings.max_new_tokens,
                  max_streams=own.max_streams or settings.max_streams,
                  max_waiting=settings.max_waiting if own.max_waiting is None else own.max_waiting,
                  kv_cache_bytes=own.kv_cache_bytes or settings.kv_cache_bytes,
                  prefix_cache_share=(settings.prefix_cache_share if own.prefix_cache_share is None
                                      else own.prefix_cache_share),
                  shared_prefixes=tuple(config.shared_prefixes), **_speculation(config))


def _speculation(config: EndpointConfig) -> dict[str, Any]:
    spec = config.speculation
    if spec is None:
        return {}
    return {"speculate_tokens": spec.tokens, "speculate_ngram": spec.ngram,
            "speculate_min_acceptance": spec.min_acceptance, "speculate_pass_tokens": spec.pass_tokens}


class Endpoint:
    def __init__(self, config: EndpointConfig, settings: ServeSettings, metrics: Metrics,
                 stats: StatsRecorder) -> None:
        self.name = config.name
        self.config = config
        self.task: type[Task] = get_task(config.task)
        self.limits = effective_limits(config, settings)
        self.request_model = self.task.request_model(self.limits, config.declared_signature())
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self.policy = CircuitPolicy(settings.circuit_failures, settings.circuit_error_rate, settings.circuit_window_s,
                                    settings.circuit_min_requests, settings.circuit_cooldown_s)
        self.cache = PredictionCache(settings.cache_size, settings.cache_ttl_s)
        self.revision = 0
        self.spec: DeploymentSpec | None = None
        self.router: Router | None = None
        self.slots: dict[str, Slot] = {}
        self.load_error: str | None = None
        # Versions from the store tried by pin only (the playground); never in the split.
        self.drift = DriftMonitor(settings.drift_sample)
        self.previews: dict[str, Slot] = {}
        self._preview_used: dict[str, float] = {}  # tag -> when a request last used it
        self._roles: set[tuple[str, str]] = set()
        self._shadow_inflight = 0
        self._background: set[asyncio.Task[Any]] = set()
        # Many models: the worker's ledger (set by the engine; None serves every version always, as in tests),
        # and what is known of the deployed versions not loaded now (on-demand endpoints).
        self.residency: Residency | None = None
        self.cold: dict[str, StoredVersion] = {}
        self.repository_pinned = False  # loaded through the model-repository API: stays until unloaded

    @property
    def on_demand(self) -> bool:
        return self.config.residency == "on-demand"

    # --- deployment changes -----------------------------------------------------------
    def missing(self, spec: DeploymentSpec) -> list[str]:
        return [v.tag for v in spec.versions if v.tag not in self.slots]

    def resident_in(self, spec: DeploymentSpec) -> list[str]:
        """The versions of `spec` that must be loaded before it serves: all of them unless this endpoint is
        on-demand and nothing pins them (a canary or shadow, the repository API)."""
        pins = self.pins(spec)
        return [v.tag for v in spec.versions if pins[v.tag]]

    def pins(self, spec: DeploymentSpec) -> dict[str, set[str]]:
        """Why each version of `spec` must stay loaded (no reason: it may be unloaded when idle)."""
        why = set() if self.on_demand else {ALWAYS}
        if any(v.role != "stable" for v in spec.versions):
            why.add(ROLLOUT)  # both sides of a split, and a shadow, answer at once
        if self.repository_pinned:
            why.add(REPOSITORY)
        return {v.tag: set(why) for v in spec.versions}

    def swap(self, revision: int, spec: DeploymentSpec, loaded: dict[str, LoadedVersion],
             cold: dict[str, StoredVersion] | None = None) -> None:
        """Switch to `spec`; every version in it is loaded and warmed, or (on-demand) described in `cold`."""
        slots = {v.tag: self.slots.get(v.tag) or self._slot(loaded[v.tag]) for v in spec.versions
                 if v.tag in self.slots or v.tag in loaded}
        self.cold = {tag: info for tag, info in (cold or {}).items() if tag not in slots}
        retired = [slot for tag, slot in self.slots.items() if tag not in slots]
        variants = {tag: slot.version.variant for tag, slot in slots.items()} | \
            {tag: info.variant for tag, info in self.cold.items()}
        self.spec, self.router, self.slots, self.revision = spec, Router(spec, variants), slots, revision
        self.load_error = None
        if self.residency is not None:
            self.residency.settle(self, self.pins(spec), slots)
        for tag, slot in slots.items():
            self.drift.watch(tag, slot.version.metadata.get("drift_reference"))
        self.drift.forget(set(slots))
        self._export_roles(spec)
        self.metrics.applied_revision.labels(self.name).set(revision)
        for slot in retired:
            self._spawn(self._retire(slot))

    async def _retire(self, slot: Slot) -> None:
        await slot.drain_and_stop()
        slot.series.queue_depth.set(0)  # a gone version holds nothing; its last sample would linger
        slot.series.in_flight.set(0)

    def sample_load(self) -> None:
        """Each live version's waiting and in-flight requests into their gauges (the engine, every second)."""
        for slot in [*self.slots.values(), *self.previews.values()]:
            slot.series.queue_depth.set(slot.queue.queue_depth)
            slot.series.in_flight.set(slot.queue.requests_in_flight)

    # --- residency (the ledger calls these) ----------------------------------------------
    def serve_loaded(self, version: LoadedVersion) -> None:
        if self.spec is None or version.tag not in {v.tag for v in self.spec.versions} or version.tag in self.slots:
            return  # redeployed while it loaded
        self.slots[version.tag] = self._slot(version)
        self.cold.pop(version.tag, None)

    def unload(self, tag: str) -> None:
        slot = self.slots.pop(tag, None)
        if slot is None:
            return
        if self.spec is not None and tag in {v.tag for v in self.spec.versions}:
            self.cold[tag] = StoredVersion(tag, slot.version.task, slot.version.variant, slot.version.codec,
                                           slot.version.metadata, slot.version.path)
        self._spawn(self._retire(slot))

    def busy(self, tag: str) -> bool:
        slot = self.slots.get(tag)
        return slot is not None and slot.queue.requests_in_flight > 0

    def file_bytes(self, tag: str) -> int:
        info = self.cold.get(tag)
        return info.file_bytes if info is not None else 0

    def stored(self, tag: str) -> StoredVersion | None:
        return self.cold.get(tag)

    def codec_of(self, tag: str) -> Codec | None:
        slot = self.slots.get(tag)
        if slot is not None:
            return slot.version.codec
        info = self.cold.get(tag)
        return info.codec if info is not None else None

    def _slot(self, version: LoadedVersion) -> Slot:
        return Slot(version, self.settings, self.policy, VersionSeries(self.metrics, self.name, version.tag),
                    self.limits)

    def _export_roles(self, spec: DeploymentSpec) -> None:
        live: set[tuple[str, str]] = {(v.tag, v.role) for v in spec.versions}
        for tag, role in self._roles - live:
            self.metrics.version_role.labels(self.name, tag, role).set(0)
        for tag, role in live:
            self.metrics.version_role.labels(self.name, tag, role).set(1)
        self._roles = live

    def preview_room(self, now: float) -> str | None:
        """Which preview to evict for a new one: none while there is room; the least recently used one
        if it has been idle PREVIEW_MIN_IDLE_S. Raises when every preview is in use, so that visitors
        pinning more versions than there are slots get a 503 instead of loading and evicting in turn."""
        if len(self.previews) < PREVIEW_SLOTS:
            return None
        tag = min(self._preview_used, key=self._preview_used.__getitem__)
        if now - self._preview_used[tag] < PREVIEW_MIN_IDLE_S:
            raise TooBusy(f"all {PREVIEW_SLOTS} pinned-preview slots of {self.name} were used in the last "
                          f"{PREVIEW_MIN_IDLE_S:g} s; pin a live version, or try again later")
        return tag

    def add_preview(self, version: LoadedVersion) -> None:
        if version.tag in self.slots or version.tag in self.previews:
            return
        now = time.monotonic()
        evict = self.preview_room(now)
        if evict is not None:
            self._preview_used.pop(evict)
            self._spawn(self._retire(self.previews.pop(evict)))
        self.previews[version.tag] = self._slot(version)
        self._preview_used[version.tag] = now

    async def drain(self) -> None:
        """Retire the whole endpoint: queued requests finish first."""
        self.router = None
        await asyncio.gather(*(slot.drain_and_stop() for slot in [*self.slots.values(), *self.previews.values()]))
        for task in list(self._background):
            task.cancel()

    async def stop(self) -> None:
        for slot in [*self.slots.values(), *self.previews.values()]:
            await slot.queue.stop()
        for task in list(self._background):
            task.cancel()

    @property
    def ready(self) -> bool:
        return self.router is not None

    # --- the request path -------------------------------------------------------------
    async def handle(self, items: list[Any], call: Call = DIRECT) -> Answer:
        """Route, batch and answer `items`; one `switchyard.request` span when tracing is on."""
        if not recording():  # the common case: no span objects on the hot path
            return await self._handle(items, call)
        with span("request", endpoint=self.name, source=call.source, protocol=call.protocol,
                  rows=len(items)) as current:
            answer = await self._handle(items, call)
            if current is not None:
                current.set_attribute("switchyard.version", answer.version)
                current.set_attribute("switchyard.route", answer.route)
            return answer

    async def _handle(self, items: list[Any], call: Call) -> Answer:
        pick = await self.pick(call)
        try:
            pick.slot.version.codec.check(items, self.limits)  # a 422 before anything is queued
            outputs, timing, answered = await self._answer(pick, items, call)
        finally:
            self._release(pick)
        total = time.monotonic() - pick.start
        self.settle(answered, call, items, outputs, total)
        return Answer(outputs, answered.tag, answered.route, timing, total, answered.slot.version.codec)

    async def pick(self, call: Call) -> Pick:
        """The version for this call: a pin (a preview, or a live version), else the split; a canary whose
        breaker refuses is answered by stable instead (route "fallback"). An on-demand version not loaded now
        is loaded first, and held (not unloaded) until the call releases its pick."""
        router = self.router
        if router is None:
            raise NoDeployment(f"endpoint {self.name} has no deployed model yet: build one with "
                               "`python -m models build --all`, then deploy it through /v1/admin")
        start = time.monotonic()
        pin = call.pin  # already allowed by the one pin policy (Serving.pin: SWITCHYARD_ALLOW_PINNING, key scopes)
        if pin and pin in self.previews:
            self._preview_used[pin] = start
            return Pick(router, self.previews[pin], pin, "pinned", start)
        with span("route", endpoint=self.name):
            choice = router.choose(call.routing_key, pin)
        hold = None
        if self.on_demand and self.residency is not None:
            hold = self.residency.hold(self, choice.tag)
            try:
                await self.residency.ready(self, hold, call.deadline_or(self.settings.request_timeout_s))
            except BaseException:
                self.residency.release(hold)
                raise
        slot = self.slots.get(choice.tag)
        if slot is None:  # redeployed while it loaded
            if hold is not None:
                self.residency.release(hold)  # type: ignore[union-attr]
            raise NoDeployment(f"{self.name} changed its deployment while {choice.tag} loaded; retry")
        if choice.route == "canary" and not slot.circuit.allow():
            if hold is not None:
                self.residency.release(hold)  # type: ignore[union-attr]
            self.metrics.fallbacks.labels(self.name, choice.tag).inc()
            return self._fallback(router, start)
        return Pick(router, slot, choice.tag, choice.route, start, slot if choice.route == "canary" else None, hold)

    def _fallback(self, router: Router, start: float) -> Pick:
        return Pick(router, self.slots[router.stable], router.stable, "fallback", start)

    def settle(self, pick: Pick, call: Call, items: list[Any], outputs: list[Any], total_s: float) -> None:
        """The books of an answered call: latency, rollout evidence, shadow and compare copies, drift."""
        tag, route, router = pick.tag, pick.route, pick.router
        pick.slot.series.request_duration.observe(total_s)
        self._evidence(tag, route, call.source, True, total_s)
        spec = self.spec
        if router.shadows and call.source != "shadow" and spec is not None \
                and random.random() * 100 < spec.shadow_sample:
            for shadow in router.shadows:
                self._mirror(shadow, items, tag, outputs, call)
        # The drift check's evidence: predicted classes of the same traffic, only while a canary shares it.
        codec = pick.slot.version.codec
        if call.source == "api" and route in ("stable", "canary") and router.spec.by_role("canary"):
            predicted = codec.predicted_classes(outputs)
            if predicted is not None:
                self.stats.record_classes(self.name, tag, predicted[0].tolist(), predicted[1])
        if call.source == "api" and self.drift.wants(tag):
            self.drift.hold(tag, codec, items, outputs)
        if route == "canary" and call.source == "api" and random.random() < self.settings.canary_compare_sample:
            self._mirror(router.stable, items, tag, outputs, call, judged=tag)

    async def _answer(self, pick: Pick, items: list[Any], call: Call) -> tuple[list[Any], Timing, Pick]:
        """Run on the chosen version; a canary that fails or is overloaded is the canary's error, and stable
        answers instead (503 only when stable has no room either)."""
        while True:  # at most twice
            try:
                outputs, timing = await self._run(pick, items, call)
                return outputs, timing, pick
            except Exception as exc:
                if isinstance(exc, ServingError) and exc.kind in CALLERS_FAULT:
                    raise  # the request's own content: not the version's failure, not a rollout's evidence
                self._evidence(pick.tag, pick.route, call.source, False, time.monotonic() - pick.start,
                               fallback=pick.route == "canary")
                if pick.route != "canary":
                    if isinstance(exc, ServingError):  # overloaded or past its deadline: the caller's answer
                        raise
                    # The runtime's own words name internals (node names, shapes, paths): logged, not sent.
                    log.warning("%s %s failed on request %s: %s", self.name, pick.tag, request_id() or "-",
                                str(exc)[:1000])
                    raise ModelFailure(f"{pick.tag} could not answer this request; the server log has the "
                                       "model's error") from exc
                self.metrics.fallbacks.labels(self.name, pick.tag).inc()
                pick = self._fallback(pick.router, pick.start)

    def _evidence(self, tag: str, route: str, source: str, ok: bool, latency_s: float, fallback: bool = False) -> None:
        """The shared per-version stats that canary analysis judges: only what the split routed from API
        clients, and shadow copies. Pinned, playground and fallback answers stay visible in /metrics
        (route and source labels) but never steer a rollout. A shadow copy counts as a request and, failed,
        as an error, but its latency is left out: it waits for spare capacity, so its time is not what users
        would see, and the rollout's stats run from its start: a shadow step's copies would otherwise be
        judged as the canary's latency at its first real step."""
        if source == "api" and route in ("stable", "canary"):
            self.stats.record(self.name, tag, ok, latency_s, fallback=fallback)
        elif route == "shadow":
            self.stats.record(self.name, tag, ok, None)

    async def _run(self, pick: Pick, items: list[Any], call: Call) -> tuple[list[Any], Timing]:
        slot, tag, route = pick.slot, pick.tag, pick.route
        series = slot.series
        key = input_key(tag, items) if self.cache.size else ""
        cached = self.cache.get(key) if key else None
        if cached is not None:
            self.metrics.cache_hits.labels(self.name, tag).inc()
            series.count(route, "ok", call)
            return cached, Timing(0.0, 0.0, 0)
        queue = slot.forward
        if queue is None:
            raise NotFound(f"{self.name} serves a {self.task.name} model, which answers on its streaming "
                           "routes, not in one forward pass")
        began = now_ns()
        try:
            outputs, timing = await queue.submit(items, call.deadline_or(self.settings.request_timeout_s),
                                                 slot.version.codec.bucket(items))
        except Overloaded:
            series.count(route, "overloaded", call)
            raise
        except ServingError as exc:
            # An input that passed the cheap checks but could not be decoded (a corrupt or blank image) is the
            # caller's: no verdict for the breaker (a probe is released), counted apart from errors.
            series.count(route, "invalid" if exc.kind in CALLERS_FAULT else "error", call)
            raise
        except Exception as exc:
            was_open = slot.circuit.state is State.OPEN
            slot.circuit.record(False)
            if slot.circuit.state is State.OPEN and not was_open:
                log.warning("%s %s: circuit opened after: %s", self.name, tag, str(exc)[:300])
            series.circuit_state.set(slot.circuit.state.value)
            series.count(route, "error", call)
            raise
        slot.circuit.record(True)
        if recording():
            batch_spans(began, timing.queue_s, timing.inference_s, endpoint=self.name, version=tag, route=route,
                        batch_rows=timing.batch_rows)
        series.circuit_state.set(slot.circuit.state.value)
        series.count(route, "ok", call)
        series.queue_wait.observe(timing.queue_s)
        series.inference_duration.observe(timing.inference_s)
        series.batch_size.observe(timing.batch_rows)
        if key:
            self.cache.put(key, outputs)
        return outputs, timing

    # --- generation (text-generation: token by token) ------------------------------------
    async def generate(self, prompt: str, params: SamplingParams, call: Call = DIRECT) -> Generation:
        """Route a prompt to a version and wait for its first token; a canary that fails before it is the
        canary's error, and stable writes instead (fallback is allowed only before the first token)."""
        pick = await self.pick(call)
        while True:
            slot = pick.slot
            loop = slot.decode
            if loop is None:
                self._release(pick)
                raise NotFound(f"{self.name} is a {self.task.name} endpoint: POST /v1/{self.name}/{self.task.verb}")
            codec = slot.version.codec
            assert isinstance(codec, GenerationCodec)
            try:
                ids = codec.tokenize(prompt)
                codec.check_prompt(ids, params.max_tokens, self.limits)
                flight = await loop.start(ids, params, call.deadline_or(self.settings.request_timeout_s),
                                          shadow=call.source == "shadow", tenant=call.key,
                                          priority=priority_of(params, call), weight=call.weight)
            except Exception as exc:
                self._release(pick)
                if isinstance(exc, ServingError) and exc.kind in CALLERS_FAULT:
                    slot.series.count(pick.route, "invalid", call)
                    raise
                if isinstance(exc, RateLimited):  # the caller's share of the queue: not the version's doing
                    slot.series.count(pick.route, "rate_limited", call)
                    raise
                slot.series.count(pick.route, "overloaded" if isinstance(exc, Overloaded) else "error", call)
                self._evidence(pick.tag, pick.route, call.source, False, time.monotonic() - pick.start,
                               fallback=pick.route == "canary")
                if pick.route != "canary":
                    if isinstance(exc, ServingError):
                        raise
                    log.warning("%s %s failed to start generating: %s", self.name, pick.tag, str(exc)[:1000])
                    raise ModelFailure(f"{pick.tag} could not start generating; the server log has the "
                                       "model's error") from exc
                self.metrics.fallbacks.labels(self.name, pick.tag).inc()
                pick = self._fallback(pick.router, pick.start)
                continue
            return Generation(self, pick, call, loop, flight, ids, params, trace_parent=current())

    def _release(self, pick: Pick) -> None:
        if pick.probe is not None:
            pick.probe.circuit.release()
        if pick.hold is not None and self.residency is not None:
            self.residency.release(pick.hold)

    def settle_generation(self, gen: Generation) -> None:
        """The books of a stream at its end: metrics, the breaker, rollout evidence (time to first token is the
        latency canary analysis judges), and a sampled greedy comparison of a canary with stable."""
        pick, call, flight = gen.pick, gen.call, gen.flight
        series, slot = pick.slot.series, pick.slot
        usage = gen.usage
        series.prompt_tokens.inc(usage.prompt_tokens)
        series.completion_tokens.inc(usage.completion_tokens)
        series.first_token.observe(gen.first_token_s)
        if usage.completion_tokens > 1 and flight.first_token_at is not None and gen.ended_at is not None:
            series.per_token.observe((gen.ended_at - flight.first_token_at) / (usage.completion_tokens - 1))
        series.request_duration.observe(gen.total_s)
        if gen.trace_parent is not None:
            ago = time.monotonic() - (gen.ended_at or time.monotonic())
            stream_spans(gen.trace_parent, ago, gen.first_token_s, gen.total_s,
                         endpoint=self.name, version=pick.tag, route=pick.route, outcome=gen.outcome or "",
                         prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if gen.outcome == "aborted":  # the client went: no verdict on the version
            series.count(pick.route, "aborted", call)
            self._release(pick)
            return
        ok = gen.outcome == "ok"
        series.count(pick.route, "ok" if ok else "error", call)
        if flight.error is None or flight.error.kind == "model_failure":
            slot.circuit.record(ok)
            series.circuit_state.set(slot.circuit.state.value)
        self._release(pick)
        self._evidence(pick.tag, pick.route, call.source, ok, gen.first_token_s)
        window = gen.window
        if ok and window is not None and window.guard.policy.output and call.source == "api" \
                and pick.route in ("stable", "canary"):
            self.stats.record_guarded(self.name, pick.tag, window.cut is not None)  # the violations check
        spec = self.spec
        if ok and call.source == "api" and spec is not None and pick.router.shadows \
                and random.random() * 100 < spec.shadow_sample:
            for shadow in pick.router.shadows:  # shadows write too (greedy, never answering): a shadow step's evidence
                self._spawn(self._judge_generation(shadow, pick.tag, gen, "shadow"))
        if ok and pick.route == "canary" and call.source == "api" \
                and random.random() < self.settings.canary_compare_sample:
            self._spawn(self._judge_generation(pick.tag, pick.router.stable, gen, "compare"))

    async def _judge_generation(self, candidate: str, reference: str, gen: Generation, route: str) -> None:
        """Token-level verdict on `candidate`'s first AGREEMENT_TOKENS greedy tokens on the prompt (the
        request's own when `candidate` answered it greedily, else a shadow run): both versions score those
        tokens teacher-forced, one prefill pass each, no decoding (decode/verdict.py). It records how often
        `reference`'s top-1 is the written token (a version that writes what the reference would is near 1
        however the two diverge later; garbage is near 0), the mean log-prob ratio and the mean KL. Background
        work: shadows are planned only when no user waits, and a comparison never affects the request."""
        mine, theirs = self.slots.get(candidate), self.slots.get(reference)
        if mine is None or theirs is None or mine.decode is None or theirs.decode is None:
            return
        start = time.monotonic()
        try:
            reuse = candidate == gen.version and gen.params.greedy and not gen.params.stop \
                and gen.params.max_tokens >= AGREEMENT_TOKENS
            written = gen.flight.stream.written if reuse else await self._greedy_ids(
                mine.decode, gen.prompt, SamplingParams(max_tokens=AGREEMENT_TOKENS))
            written = list(written[:AGREEMENT_TOKENS])
            if route == "shadow":
                self._evidence(candidate, route, "shadow", True, time.monotonic() - start)
            if not written:
                return
            theirs_lp = await theirs.decode.log_probs(gen.prompt, written)
            mine_lp = await mine.decode.log_probs(gen.prompt, written)
        except Exception as exc:
            if route == "shadow":
                self._evidence(candidate, route, "shadow", False, time.monotonic() - start)
            log.debug("%s %s against %s: %s", route, candidate, reference, exc)
            return
        agreement = mine.version.codec.agreement(written, [int(t) for t in theirs_lp.argmax(axis=-1)])
        self.metrics.shadow_agreement.labels(self.name, candidate, reference).observe(agreement)
        self.stats.record_agreement(self.name, candidate, agreement)
        verdict = token_verdict(written, mine_lp, theirs_lp)
        if verdict is not None:  # None: the two vocabularies differ, so there is no distribution to compare
            self.metrics.token_kl.labels(self.name, candidate, reference).observe(verdict.kl)
            self.stats.record_divergence(self.name, candidate, verdict.kl, verdict.log_ratio)

    async def _greedy_ids(self, loop: DecodeLoop, prompt: list[int], params: SamplingParams) -> list[int]:
        flight = await loop.start(prompt, params, time.monotonic() + self.settings.request_timeout_s, shadow=True)
        await flight.done.wait()
        return flight.stream.written

    # --- shadow traffic ---------------------------------------------------------------
    def _mirror(self, version: str, items: list[Any], primary: str, primary_out: list[Any], call: Call = DIRECT,
                judged: str | None = None) -> None:
        """Ask `version` too, in the background, and record how far it agrees with `primary`'s answers:
        a shadow is judged against the version that answered; a sampled canary answer (`judged`) against
        stable. Never delays the primary; dropped and counted when the shadow queue is full."""
        if self._shadow_inflight >= self.settings.shadow_queue or self._primary_busy():
            self.metrics.shadow_dropped.labels(self.name, version).inc()
            return
        self._shadow_inflight += 1
        copy = Call(source="shadow", protocol=call.protocol, key=call.key)
        self._spawn(self._shadow(version, items, primary, primary_out, copy, judged))

    def _primary_busy(self) -> bool:
        """Copies run on spare capacity only: while a version answering users has a batch in the model or
        requests waiting, the cores are better spent on them (a copy would compete with them for the cores)."""
        spec = self.spec
        if spec is None:
            return False
        return any(slot.queue.busy for tag, slot in self.slots.items()
                   if tag in {v.tag for v in spec.versions if v.role != "shadow"})

    async def _shadow(self, shadow: str, items: list[Any], primary: str, primary_out: list[Any], call: Call,
                      judged: str | None = None) -> None:
        slot, router = self.slots.get(shadow), self.router
        if slot is None or router is None:
            self._shadow_inflight -= 1
            return
        start, route = time.monotonic(), "compare" if judged else "shadow"
        try:
            with span(route, endpoint=self.name, version=shadow, primary=primary):
                outputs, _ = await self._run(Pick(router, slot, shadow, route, start), items, call)
            # Successes count as well as failures: a rollout's shadow step judges both.
            self._evidence(shadow, route, "shadow", True, time.monotonic() - start)
            for a, b in zip(primary_out, outputs, strict=True):
                agreement = slot.version.codec.agreement(a, b)
                self.metrics.shadow_agreement.labels(self.name, judged or shadow, primary).observe(agreement)
                self.stats.record_agreement(self.name, judged or shadow, agreement)
        except Exception as exc:  # a shadow never affects the primary
            self._evidence(shadow, route, "shadow", False, time.monotonic() - start)
            log.debug("%s %s failed: %s", route, shadow, exc)
        finally:
            self._shadow_inflight -= 1

    async def absorb_drift(self) -> None:
        """Add the sampled requests held since the last call to their versions' live profiles: features
        for all of them in one call per version, on a thread (images would be decoded again, texts
        tokenized), so that the request path only keeps a reference."""
        held = self.drift.take()
        if not held:
            return
        try:
            observed = await asyncio.to_thread(features_of, held)
        except Exception as exc:  # drift never fails serving
            log.warning("drift features for %s: %s", self.name, exc)
            return
        for tag, features, classes in observed:
            if tag in self.drift.live:
                self.drift.observe(tag, features, classes)

    def export_drift(self, feature: str | None = None) -> dict[str, dict[str, Any]]:
        """Each watched version's drift report (with `feature`'s bins), also set on the Prometheus gauges."""
        reports = self.drift.reports(feature)
        for tag, report in reports.items():
            for feature, scores in report["features"].items():
                self.metrics.drift_score.labels(self.name, tag, feature).set(scores["psi"])
            if report["prediction_drift"] is not None:
                self.metrics.prediction_drift.labels(self.name, tag).set(report["prediction_drift"])
        return reports

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- reporting --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        spec = self.spec
        versions = []
        ledger = self.residency.entries(self.name) if self.residency is not None else {}
        for v in spec.versions if spec else []:
            slot, cold, entry = self.slots.get(v.tag), self.cold.get(v.tag), ledger.get(v.tag)
            state = "loaded" if slot else "loading" if entry and entry.loading else "cold" if cold else "missing"
            versions.append({"tag": v.tag, "role": v.role, "weight": v.weight,
                             "variant": slot.version.variant if slot else cold.variant if cold else None,
                             "state": state, "resident_bytes": entry.bytes if entry and entry.resident else None,
                             "pins": sorted(entry.pins) if entry else [],
                             "circuit": slot.circuit.state.name.lower() if slot else None,
                             "queue_depth": slot.queue.queue_depth if slot else 0})
        return {"task": self.task.name, "route": f"/v1/{self.name}/{self.task.verb}", "revision": self.revision,
                "residency": self.config.residency, "sticky": bool(spec and spec.sticky),
                "shadow_sample": spec.shadow_sample if spec else 100.0,
                "ready": self.ready, "versions": versions,
                "load_error": self.load_error}

    def signature(self) -> dict[str, Any] | None:
        """What every version here must match: the declared signature, else the stable version's."""
        declared = self.config.declared_signature()
        if declared is not None:
            return declared
        codec = self.codec_of(self.spec.stable.tag) if self.spec else None
        return codec.schema() if codec else None
