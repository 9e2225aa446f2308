"""The worker's model ledger alone (a fake clock, hosts and loader), then on real endpoints and sessions."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bentos.config import EndpointConfig
from bentos.dataplane.endpoint import Endpoint
from bentos.dataplane.metrics import get_metrics
from bentos.dataplane.residency import ALWAYS, Residency
from bentos.dataplane.runtime import LoadedVersion, StoredVersion
from bentos.dataplane.stats import StatsRecorder
from bentos.errors import DeadlineExceeded, MemoryFull
from bentos.schemas import DeploymentSpec
from bentos.settings import ServeSettings, memory_limit, parse_memory
from tests.bentos.test_endpoint import ROWS, Slow, version

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """An endpoint as the ledger sees it: what it serves, and what is busy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.served: set[str] = set()
        self.busy_tags: set[str] = set()

    def serve_loaded(self, version: Any) -> None:
        self.served.add(version.tag)

    def unload(self, tag: str) -> None:
        self.served.discard(tag)

    def busy(self, tag: str) -> bool:
        return tag in self.busy_tags

    def file_bytes(self, tag: str) -> int:
        return 10 * MB // 3

    def stored(self, tag: str) -> None:
        return None


class Loader:
    """Loads take `seconds` and grow a fake RSS by each tag's size; counts the loads."""

    def __init__(self, sizes: dict[str, int] | None = None, seconds: float = 0.0) -> None:
        self.sizes, self.seconds = sizes or {}, seconds
        self.rss, self.calls, self.fail = 100 * MB, [], False
        self.lock = threading.Lock()

    def __call__(self, tag: str, stored: Any = None) -> Any:
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("corrupt graph")
        with self.lock:
            self.calls.append(tag)
            self.rss += self.sizes.get(tag, 10 * MB)

        class Version:
            path = None

        v = Version()
        v.tag = tag  # type: ignore[attr-defined]
        return v


def ledger(budget: int | None, loader: Loader, clock: Clock | None = None, min_resident_s: float = 10.0,
           measured: list[tuple[str, int]] | None = None) -> Residency:
    return Residency(budget, min_resident_s, loader, get_metrics(), clock=clock or Clock(),
                     rss=lambda: loader.rss,
                     on_measured=(lambda t, b: measured.append((t, b))) if measured is not None else None)


async def serve(r: Residency, host: Host, tag: str, deadline: float = float("inf")) -> None:
    entry = r.hold(host, tag)
    try:
        await r.ready(host, entry, deadline)
    finally:
        r.release(entry)


async def test_concurrent_first_requests_share_one_load() -> None:
    loader = Loader(seconds=0.2)
    r, host = ledger(None, loader), Host("a")
    await asyncio.gather(*(serve(r, host, "a:1") for _ in range(20)))
    assert loader.calls == ["a:1"] and host.served == {"a:1"}
    await serve(r, host, "a:1")  # resident now: no second load
    assert loader.calls == ["a:1"]


async def test_the_least_recently_used_idle_version_goes_and_the_budget_holds() -> None:
    clock, loader = Clock(), Loader()
    r, hosts = ledger(35 * MB, loader, clock), {n: Host(n) for n in "abcd"}
    for name in "abc":
        clock.now += 20
        await serve(r, hosts[name], f"{name}:1")
    clock.now += 20
    await serve(r, hosts["a"], "a:1")  # a is used again: b is now the least recently used
    clock.now += 20
    await serve(r, hosts["d"], "d:1")
    assert [e.endpoint for e in r.resident()] == ["a", "c", "d"]
    assert hosts["b"].served == set() and r.used <= 35 * MB


async def test_a_held_or_busy_version_is_never_unloaded_and_a_full_budget_is_a_503_naming_it() -> None:
    clock, loader = Clock(), Loader()
    r, a, b, c = ledger(25 * MB, loader, clock), Host("a"), Host("b"), Host("c")
    await serve(r, a, "a:1")
    await serve(r, b, "b:1")
    held = r.hold(a, "a:1")  # a request between routing and the queue
    b.busy_tags.add("b:1")  # requests queued or in the model
    clock.now += 60
    with pytest.raises(MemoryFull) as refused:  # its deadline is now: no waiting for a to go idle
        await r.load(c, "c:1", strict=True, deadline=clock.now)
    assert "SWITCHYARD_MODEL_MEMORY" in refused.value.message and refused.value.kind == "overloaded"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert a.served == {"a:1"} and b.served == {"b:1"}
    waiting = asyncio.create_task(serve(r, c, "c:1", deadline=clock.now + 30))
    await asyncio.sleep(0.2)
    assert not waiting.done() and a.served == {"a:1"}  # it waits while a's request is on its way
    r.release(held)
    await asyncio.wait_for(waiting, 5)  # a is idle now, and b still busy: a goes
    assert a.served == set() and b.served == {"b:1"} and c.served == {"c:1"}


async def test_pinned_versions_stay_and_a_pinned_load_passes_the_budget_rather_than_fail() -> None:
    clock, loader = Clock(), Loader()
    r, a, b = ledger(15 * MB, loader, clock), Host("a"), Host("b")
    await r.load(a, "a:1")  # as the engine loads an `always` version, then settles its pins
    r.settle(a, {"a:1": {ALWAYS}}, ["a:1"])
    clock.now += 60
    with pytest.raises(MemoryFull):  # only a pinned version holds the budget: at once, whatever the deadline
        await serve(r, b, "b:1", deadline=clock.now + 30)
    await r.load(b, "b:2")  # pinned: loads anyway
    assert r.used == 20 * MB and {e.tag for e in r.resident()} == {"a:1", "b:2"}


async def test_no_ping_pong_between_two_versions_just_swapped() -> None:
    clock, loader = Clock(), Loader()
    r, a, b = ledger(15 * MB, loader, clock, min_resident_s=10), Host("a"), Host("b")
    await serve(r, a, "a:1")
    clock.now += 20
    await serve(r, b, "b:1")  # a goes: it was loaded long ago
    clock.now += 1
    with pytest.raises(MemoryFull) as refused:  # a comes back at once: b is not thrown out for it
        await r.load(a, "a:1", strict=True, deadline=clock.now)
    assert refused.value.headers["Retry-After"] == "9"
    clock.now += 10
    await serve(r, a, "a:1")
    assert a.served == {"a:1"} and b.served == set()


async def test_the_first_measurement_is_kept_and_later_loads_count_it() -> None:
    clock, loader, measured = Clock(), Loader({"a:1": 7 * MB}), []
    r, a = ledger(None, loader, clock, measured=measured), Host("a")
    await serve(r, a, "a:1")
    assert measured == [("a:1", 7 * MB)] and r.used == 7 * MB
    r.unload(r.entries("a")["a:1"], "test")
    loader.sizes["a:1"] = 3 * MB  # the allocator reused memory: this load grows the RSS less
    await serve(r, a, "a:1")
    assert measured == [("a:1", 7 * MB)] and r.used == 7 * MB


async def test_waiters_past_their_deadline_get_503_and_a_failed_load_reaches_every_waiter() -> None:
    loader = Loader(seconds=0.3)
    clock = Clock()
    r, a = ledger(None, loader, clock), Host("a")
    with pytest.raises(DeadlineExceeded):
        await serve(r, a, "a:1", deadline=clock.now)  # the fake clock does not move: the load outlasts it
    loader.fail = True
    results = await asyncio.gather(*(serve(r, a, "b:1") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(x, RuntimeError) for x in results)
    loader.fail = False
    await serve(r, a, "b:1")  # the next request tries again
    assert "b:1" in a.served


def test_memory_settings_take_bytes_units_and_a_share_of_the_container(tmp_path: Path) -> None:
    assert parse_memory("2000000000", 0) == 2_000_000_000
    assert parse_memory("1.5GiB", 0) == 3 << 29 and parse_memory("512Mi", 0) == 512 * MB
    limit = tmp_path / "memory.max"
    limit.write_text("4294967296\n")
    assert parse_memory("25%", memory_limit(limit)) == 1 << 30
    limit.write_text("max\n")
    assert memory_limit(limit) > 0  # the machine's memory
    with pytest.raises(ValueError, match="SWITCHYARD_MODEL_MEMORY: 'lots' is not a size"):
        ServeSettings(model_memory="lots")
    with pytest.raises(ValueError, match="at most 100%"):
        ServeSettings(model_memory="140%")


# --- on real endpoints: the request path holds what it uses -------------------------------------
def on_demand(name: str, tag: str, residency: Residency, cold: StoredVersion) -> Endpoint:
    config = EndpointConfig(name=name, task="image-classification", residency="on-demand")
    ep = Endpoint(config, ServeSettings(), get_metrics(), StatsRecorder())
    ep.residency = residency
    ep.swap(1, DeploymentSpec.model_validate({"versions": [{"tag": tag, "role": "stable", "weight": 100}]}), {},
            {tag: cold})
    return ep


def stored(v: LoadedVersion) -> StoredVersion:
    return StoredVersion(v.tag, v.task, v.variant, v.codec, v.metadata, v.path)


async def test_a_version_answering_a_slow_request_is_not_unloaded_under_it(digits_root: Path) -> None:
    versions = {"slow:1": version(digits_root, "digits-mlp", "slow:1", Slow),
                "mlp:2": version(digits_root, "digits-mlp", "mlp:2")}
    residency = Residency(15, 0.0, lambda tag, _: versions[tag], get_metrics())  # room for one version at a time
    residency.sizes = {"slow:1": 10, "mlp:2": 10}
    slow = on_demand("slow", "slow:1", residency, stored(versions["slow:1"]))
    other = on_demand("other", "mlp:2", residency, stored(versions["mlp:2"]))
    assert slow.health()["versions"][0]["state"] == "cold"
    first = asyncio.create_task(slow.handle(ROWS))  # loads, then 0.5 s in the model
    for _ in range(500):
        if "slow:1" in slow.slots:
            break
        await asyncio.sleep(0.01)
    answer = await other.handle(ROWS)  # waits for slow's request to finish: only then may slow go
    assert first.done() and len(first.result().outputs) == len(ROWS)
    assert answer.version == "mlp:2" and "slow:1" not in slow.slots and slow.cold.keys() == {"slow:1"}
    assert slow.health()["versions"][0]["state"] == "cold"
    assert other.health()["versions"][0]["state"] == "loaded"
    assert (await slow.handle(ROWS)).version == "slow:1"  # loads again on its next request
    await slow.stop()
    await other.stop()
