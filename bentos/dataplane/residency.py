"""Which model versions this worker holds in memory, and which it may let go.

One ledger per worker. Every loaded version is an entry with its size: the growth of the worker's
resident memory while it loaded and warmed, measured at its first load and stored with the version, so
that later loads count that figure and the ledger does not wander with the allocator. Loads run one at
a time, so each measurement is that load's alone.

Pinned entries stay: the versions of `always` endpoints, of an endpoint with a canary or shadow (both
sides of a split must answer at once), and of endpoints an operator loaded through the model-repository
API. The others (endpoints with `residency: on-demand`) load on their first request; requests arriving
meanwhile wait for that same load. When a load would pass the budget (SWITCHYARD_MODEL_MEMORY), the
least recently used idle versions are unloaded first; a version with requests held, queued or in the
model never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bentos.dataplane.runtime import LoadedVersion, StoredVersion, warm_runtime
from bentos.dataplane.tracing import span
from bentos.errors import DeadlineExceeded, MemoryFull

log = logging.getLogger("switchyard.residency")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A load waiting for room looks again at least this often (a request finishing also wakes it).
WAIT_S = 0.05
# Pins: why an entry may not be unloaded.
ALWAYS, ROLLOUT, REPOSITORY, DEPLOYING = "always", "rollout", "repository", "deploying"


def resident_memory() -> int:
    """This process's resident set, in bytes (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def give_back_freed() -> None:
    """Return freed heap to the system (glibc keeps it otherwise): an unloaded session's memory then leaves
    the worker's RSS, and the next load's measurement starts from a clean baseline."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Host(Protocol):
    """What the ledger needs of an endpoint (`Endpoint` is one)."""

    name: str

    def serve_loaded(self, version: LoadedVersion) -> None:
        """An on-demand version is loaded and warmed: it takes requests from now on."""
        ...

    def unload(self, tag: str) -> None:
        """Take the version out of service; its (idle) queue drains and stops in the background."""
        ...

    def busy(self, tag: str) -> bool:
        """Requests wait for the version or are in its model."""
        ...

    def file_bytes(self, tag: str) -> int:
        """The version's graph file: what its size is guessed from before its first load."""
        ...

    def stored(self, tag: str) -> StoredVersion | None:
        """What is known of the version already (verified once): a reload skips the model store's lookup."""
        ...


@dataclass
class Entry:
    endpoint: str
    tag: str
    pins: set[str] = field(default_factory=set)
    holds: int = 0  # requests between routing and the version's queue (or a stream's whole life)
    bytes: int = 0  # counted while resident
    resident: bool = False
    loaded_at: float = -math.inf
    last_used: float = -math.inf
    unloaded_at: float = -math.inf
    loading: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.endpoint, self.tag


class Residency:
    def __init__(self, budget: int | None, min_resident_s: float,
                 loader: Callable[[str, StoredVersion | None], LoadedVersion],
                 metrics: Any = None, on_measured: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, rss: Callable[[], int] = resident_memory) -> None:
        self.budget, self.min_resident_s = budget, min_resident_s
        self.sizes: dict[str, int] = {}  # tag -> bytes measured at its first load (shared through the store)
        self._loader, self._metrics, self._on_measured = loader, metrics, on_measured
        self._clock, self._rss = clock, rss
        self._entries: dict[tuple[str, str], Entry] = {}
        self._hosts: dict[str, Host] = {}
        self._lock = asyncio.Lock()  # one load at a time: the budget check and the measurement are exact
        self._runtime_started = False
        self._freed = asyncio.Event()  # set when a version may have become idle
        # Loaded size per byte of graph file, the largest seen (a first guess of 3: weights, a prepacked copy).
        self._ratio = 3.0
        if metrics is not None and budget is not None:
            metrics.memory_budget.set(budget)

    # --- what is resident ------------------------------------------------------------
    @property
    def used(self) -> int:
        return sum(e.bytes for e in self._entries.values() if e.resident)

    def resident(self) -> list[Entry]:
        return [e for e in self._entries.values() if e.resident]

    def entries(self, endpoint: str) -> dict[str, Entry]:
        return {e.tag: e for e in self._entries.values() if e.endpoint == endpoint}

    def entry(self, host: Host, tag: str) -> Entry:
        self._hosts[host.name] = host
        key = (host.name, tag)
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = Entry(host.name, tag)
        return found

    # --- the request path ------------------------------------------------------------
    def hold(self, host: Host, tag: str) -> Entry:
        """A request is on its way to `tag`: it is not unloaded until `release`."""
        entry = self.entry(host, tag)
        entry.holds += 1
        entry.last_used = self._clock()
        return entry

    def release(self, entry: Entry) -> None:
        entry.holds -= 1
        entry.last_used = self._clock()
        if entry.holds == 0:
            self._freed.set()  # a load waiting for room may find it now

    async def ready(self, host: Host, entry: Entry, deadline: float) -> None:
        """Return once `entry` serves: at once if resident, else after its load (one load however many
        requests wait for it), or DeadlineExceeded when `deadline` comes first; a failed load raises its error
        to every waiter, and the next request tries again."""
        if entry.resident:
            return
        if self._metrics is not None:
            self._metrics.load_waits.labels(host.name).inc()
        if entry.loading is None:
            entry.loading = asyncio.get_running_loop().create_task(self._load_on_demand(host, entry, deadline))
        try:
            await asyncio.wait_for(asyncio.shield(entry.loading), max(0.0, deadline - self._clock()))
        except TimeoutError:
            raise DeadlineExceeded(f"{entry.tag} was still loading at the request's deadline") from None

    async def _load_on_demand(self, host: Host, entry: Entry, deadline: float) -> None:
        start = self._clock()
        try:
            version = await self.load(host, entry.tag, strict=True, deadline=deadline)
            if version is not None and entry.key in self._entries:  # not forgotten meanwhile (endpoint deleted)
                host.serve_loaded(version)
            if self._metrics is not None:
                self._metrics.cold_start.labels(host.name).observe(self._clock() - start)
        finally:
            entry.loading = None

    # --- loading and unloading -------------------------------------------------------------
    async def load(self, host: Host, tag: str, strict: bool = False,
                   deadline: float = math.inf) -> LoadedVersion | None:
        """Load and warm `tag` for `host`, making room first. `strict` (on-demand loads): when what holds the
        memory is in use or just loaded, wait for it to go idle until `deadline`; MemoryFull when that passes,
        or at once when only pinned versions hold the budget; None when another path loaded it meanwhile.
        Otherwise (pinned loads: `always`, rollouts, repository) it loads anyway and says so: those are the
        operator's to size."""
        entry = self.entry(host, tag)
        while True:
            async with self._lock:
                if strict and entry.resident:
                    return None
                need = self.sizes.get(tag) or int(host.file_bytes(tag) * self._ratio)
                wait = self._room(need, entry, strict, deadline)
                if wait is None:
                    version = await self._load_now(host, entry, strict)
                    break
            # Outside the lock: other loads, which may find room elsewhere, go on meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), wait)
        self._export(entry)
        return version

    async def _load_now(self, host: Host, entry: Entry, strict: bool) -> LoadedVersion:
        tag = entry.tag
        if not strict:
            entry.pins.add(DEPLOYING)  # until the swap that serves it settles its pins
        with span("load", endpoint=host.name, version=tag):
            version, measured, graph = await asyncio.to_thread(self._measured_load, tag, host.stored(tag))
        if tag not in self.sizes:
            self.sizes[tag] = measured
            self._ratio = max(self._ratio, measured / graph) if graph else self._ratio
            if self._on_measured is not None:
                self._on_measured(tag, measured)
        entry.bytes = self.sizes[tag]
        entry.resident, entry.loaded_at = True, self._clock()
        entry.last_used = max(entry.last_used, entry.loaded_at)
        self._count("loads", entry)
        self._fit_after(entry, strict)
        return version

    def _fit_after(self, entry: Entry, strict: bool) -> None:
        """A first load measured more than its guess: others make room now; if none can, an on-demand version
        is unloaded again (the budget holds, and its size is known for next time)."""
        try:
            self.make_room(0, entry, strict)
        except MemoryFull:
            entry.resident, entry.unloaded_at = False, self._clock()
            self._export(entry)
            raise

    def _measured_load(self, tag: str, stored: StoredVersion | None) -> tuple[LoadedVersion, int, int]:
        """The version, and how much the worker's resident memory grew while it loaded and warmed (at least
        its graph file: ORT holds the weights once whatever the allocator reuses)."""
        if not self._runtime_started:
            warm_runtime()  # the runtime's own start is not the first version's size
            self._runtime_started = True
        give_back_freed()
        before = self._rss()
        version = self._loader(tag, stored)
        grew = self._rss() - before
        try:
            floor = (version.path / "model.onnx").stat().st_size
        except (OSError, AttributeError, TypeError):
            floor = 0
        return version, max(grew, floor, 1), floor

    def _room(self, need: int, entry: Entry, strict: bool, deadline: float) -> float | None:
        """`make_room`: None when there is room now; else how long to wait before looking again, while the
        versions that could go are only busy for now (requests in them, or loaded within the thrash guard):
        they go idle within milliseconds, or the guard's seconds. MemoryFull past the deadline, or at once
        when only pinned versions hold the budget."""
        try:
            self.make_room(need, entry, strict)
            return None
        except MemoryFull:
            now = self._clock()
            if now >= deadline or not any(not e.pins and e is not entry for e in self.resident()):
                raise
            self._freed.clear()
            guard = min((e.loaded_at + self.min_resident_s - now for e in self.resident()
                         if e.loaded_at + self.min_resident_s > now), default=WAIT_S)
            return max(0.001, min(deadline - now, guard, WAIT_S))

    def make_room(self, need: int, incoming: Entry, strict: bool) -> None:
        """Unload least recently used idle versions until `need` more bytes fit the budget."""
        if self.budget is None:
            return
        now = self._clock()
        while self.used + need > self.budget:
            victim = self._victim(incoming, now)
            if victim is None:
                if strict:
                    raise self._full(incoming, need, now)
                log.warning("loading %s passes SWITCHYARD_MODEL_MEMORY (%d of %d bytes held by pinned or busy "
                            "versions); it is pinned, so it loads anyway", incoming.tag, self.used, self.budget)
                return
            self.unload(victim, "budget")

    def _victim(self, incoming: Entry, now: float) -> Entry | None:
        thrashing = now - incoming.unloaded_at < self.min_resident_s
        candidates = [e for e in self._entries.values()
                      if e.resident and e is not incoming and not e.pins and e.holds == 0
                      and not self._hosts[e.endpoint].busy(e.tag)
                      # no ping-pong: a version just loaded is not unloaded for one just unloaded itself
                      and not (thrashing and now - e.loaded_at < self.min_resident_s)]
        return min(candidates, key=lambda e: e.last_used, default=None)

    def _full(self, incoming: Entry, need: int, now: float) -> MemoryFull:
        guarded = [e.loaded_at + self.min_resident_s - now for e in self.resident()
                   if not e.pins and e.holds == 0 and now - e.loaded_at < self.min_resident_s]
        return MemoryFull(f"model memory budget full: {self.used} of {self.budget} bytes (SWITCHYARD_MODEL_MEMORY) "
                          f"are held by versions pinned, in use or just loaded; {incoming.tag} needs about {need}",
                          retry_after_s=min(guarded, default=1.0))

    def unload(self, entry: Entry, why: str) -> None:
        """Take `entry` out of service now (its queue is idle, so draining is immediate)."""
        host = self._hosts[entry.endpoint]
        host.unload(entry.tag)
        entry.resident, entry.unloaded_at = False, self._clock()
        self._count("evictions", entry)
        self._export(entry)
        log.info("unloaded %s of %s (%s): %d of %s bytes now held", entry.tag, entry.endpoint, why, self.used,
                 self.budget if self.budget is not None else "unlimited")

    def unload_idle(self, host: Host) -> list[str]:
        """Unload `host`'s unpinned, idle versions now (the repository's unload); the tags still resident."""
        kept = []
        for entry in list(self.entries(host.name).values()):
            if not entry.resident:
                continue
            if entry.pins or entry.holds or host.busy(entry.tag):
                kept.append(entry.tag)
            else:
                self.unload(entry, "unload")
        return kept

    # --- deployment changes --------------------------------------------------------------
    def settle(self, host: Host, pins: dict[str, set[str]], resident: Iterable[str]) -> None:
        """After a swap: each live tag's pins; versions the endpoint no longer serves leave the ledger."""
        self._hosts[host.name] = host
        live = set(resident)
        for entry in list(self.entries(host.name).values()):
            if entry.tag in pins:
                entry.pins = set(pins[entry.tag])
            if entry.tag not in live and entry.loading is None:
                self._drop(entry)
            elif entry.tag not in pins and entry.tag in live:
                entry.pins = set()

    def forget(self, endpoint: str) -> None:
        """The endpoint is gone: its versions leave the ledger (the endpoint drains them itself)."""
        for entry in list(self.entries(endpoint).values()):
            self._drop(entry)
        self._hosts.pop(endpoint, None)

    def _drop(self, entry: Entry) -> None:
        self._entries.pop(entry.key, None)
        entry.resident = False
        self._export(entry)

    # --- metrics -------------------------------------------------------------------
    def _count(self, what: str, entry: Entry) -> None:
        if self._metrics is not None:
            getattr(self._metrics, what).labels(entry.endpoint, entry.tag).inc()

    def _export(self, entry: Entry) -> None:
        if self._metrics is None:
            return
        self._metrics.resident_bytes.labels(entry.endpoint, entry.tag).set(entry.bytes if entry.resident else 0)
        self._metrics.resident_versions.set(len(self.resident()))
        self._metrics.resident_total.set(self.used)

    def report(self) -> dict[str, Any]:
        """For /v1/health: the budget, what is held, and each resident version."""
        return {"budget_bytes": self.budget, "used_bytes": self.used, "resident": len(self.resident()),
                "min_resident_s": self.min_resident_s}
