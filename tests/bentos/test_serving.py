"""The one serving path (`Serving`) with a fake endpoint: what every protocol gets by going through it.

Admission is released on every exit, a cancelled call included; refusals at the gate and by admission
are counted as denied and take no admission; one payload entry per answered call; the call reaches the
endpoint with its protocol, key, routing key and deadline; pins follow one policy whatever the protocol;
an unknown endpoint is a 404 at once that asks the engine to look, never a control-plane call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from bentos.dataplane.access import AccessGate, Admission, LiveKey, digest, new_secret
from bentos.dataplane.batching import Timing
from bentos.dataplane.call import Call, CallMeta
from bentos.dataplane.endpoint import Answer
from bentos.dataplane.metrics import get_metrics
from bentos.dataplane.serving import Serving
from bentos.errors import (
    BodyTooLarge,
    ModelFailure,
    NotFound,
    QueueFull,
    RateLimited,
    ServingError,
    TooBusy,
    Unauthorized,
)
from bentos.settings import ServeSettings
from bentos.tasks.base import Limits


class Codec:
    def decode(self, rows: list[Any], **options: Any) -> list[Any]:
        return [{"label": r, **options} for r in rows]


class FakeEndpoint:
    """Records each call it gets; answers, fails or waits as told."""

    def __init__(self, name: str = "digits") -> None:
        self.name, self.ready = name, True
        self.limits = Limits(max_rows=8, max_chars=100, max_body_bytes=1000, max_image_pixels=64)
        self.config = type("Config", (), {"redact_payloads": False})()
        self.slots: dict[str, Any] = {"digits-mlp:abc": object()}
        self.previews: dict[str, Any] = {}
        self.calls: list[Call] = []
        self.fail: Exception | None = None
        self.hold = asyncio.Event()
        self.hold.set()

    async def handle(self, items: list[Any], call: Call) -> Answer:
        self.calls.append(call)
        await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return Answer(outputs=[i * 2 for i in items], version="digits-mlp:abc", route="stable",
                      timing=Timing(0.0, 0.001, len(items)), total_s=0.002, codec=Codec())  # type: ignore[arg-type]


@dataclass
class Registry:
    endpoints: dict[str, Any]
    looks: int = 0
    previews: list[tuple[str, str]] = field(default_factory=list)
    appears: Any = None  # an endpoint the next look finds (created through another worker a moment ago)

    async def look(self) -> None:
        self.looks += 1
        if self.appears is not None:
            self.endpoints[self.appears.name], self.appears = self.appears, None

    async def preview(self, name: str, version: str) -> str:
        self.previews.append((name, version))
        return f"digits-cnn:{version}"


class Payloads:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def sampled(self) -> bool:
        return True

    def put(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


GOLD, PLAIN = new_secret(), new_secret()


def serving(max_requests: int = 4, **settings: Any) -> tuple[Serving, FakeEndpoint, Registry, Payloads]:
    ep, payloads = FakeEndpoint(), Payloads()
    registry = Registry({"digits": ep})
    config = ServeSettings(**settings)
    gate = AccessGate(config)
    gate.set_keys([(digest(GOLD), LiveKey("gold", 1000, 1000, frozenset({"pin"}))),
                   (digest(PLAIN), LiveKey("plain", 1, 1, frozenset()))])
    s = Serving(registry, gate, Admission(max_requests, 10_000), get_metrics(), payloads, config)  # type: ignore[arg-type]
    return s, ep, registry, payloads


async def infer(s: Serving, meta: CallMeta, items: list[Any] | None = None) -> Answer:
    async with s.admit(meta) as ticket:
        return await ticket.infer(items or [1, 2], {"top_k": 1})


def denied(key: str, status: str) -> float:
    return REGISTRY.get_sample_value("switchyard_denied_total", {"key": key, "status": status}) or 0.0


async def test_an_answer_reaches_the_caller_with_one_payload_entry_and_admission_released() -> None:
    s, ep, _, payloads = serving()
    meta = CallMeta("digits", {"x-api-key": GOLD}, "10.0.0.1", routing_key="user-7", protocol="oip",
                    declared_bytes=300, deadline=123.0)
    answer = await infer(s, meta)
    assert answer.outputs == [2, 4]
    assert ep.calls == [Call(routing_key="user-7", pin=None, source="api", protocol="oip", key="gold",
                             deadline=123.0)]
    (entry,) = payloads.entries
    assert (entry["protocol"], entry["key"], entry["version"]) == ("oip", "gold", "digits-mlp:abc")
    assert entry["inputs"] == [1, 2] and entry["outputs"] == [{"label": 2, "top_k": 1}, {"label": 4, "top_k": 1}]
    assert (s.admission.requests, s.admission.bytes) == (0, 0)


@pytest.mark.parametrize("failure", [ModelFailure("m:1 broke"), QueueFull("full"), RuntimeError("a bug")])
async def test_admission_is_released_and_nothing_logged_when_the_endpoint_fails(failure: Exception) -> None:
    s, ep, _, payloads = serving()
    ep.fail = failure
    with pytest.raises(type(failure)):
        await infer(s, CallMeta("digits", declared_bytes=500))
    assert (s.admission.requests, s.admission.bytes) == (0, 0) and payloads.entries == []


async def test_admission_is_released_when_the_caller_goes_away_mid_call() -> None:
    s, ep, _, payloads = serving()
    ep.hold.clear()
    async def call() -> None:
        async with s.admit(CallMeta("digits")) as ticket:
            ticket.reserve(700)  # the body, as it arrived
            await ticket.infer([1])

    task = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    assert (s.admission.requests, s.admission.bytes) == (1, 700)  # held while the call is in the model
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (s.admission.requests, s.admission.bytes) == (0, 0) and payloads.entries == []


async def test_an_error_in_the_adapters_own_work_inside_the_call_releases_admission_too() -> None:
    s, _, _, _ = serving()
    with pytest.raises(ServingError, match="content-type"):
        async with s.admit(CallMeta("digits")) as ticket:
            assert ticket.endpoint.name == "digits"
            raise ServingError("content-type: no boundary", field="content-type")
    assert (s.admission.requests, s.admission.bytes) == (0, 0)


async def test_body_bytes_are_reserved_as_they_arrive_and_a_declared_excess_is_refused_unread() -> None:
    """A slow or chunked body holds only what has arrived; one declared over the limit takes nothing."""
    s, ep, _, _ = serving()
    async with s.admit(CallMeta("digits", declared_bytes=900)) as ticket:
        assert (s.admission.requests, s.admission.bytes) == (1, 0)  # nothing reserved for bytes not yet here
        ticket.reserve(300)
        ticket.reserve(200)
        assert s.admission.bytes == 500
    assert (s.admission.requests, s.admission.bytes) == (0, 0)
    with pytest.raises(BodyTooLarge, match=r"limits\.max_body_bytes"):
        async with s.admit(CallMeta("digits", declared_bytes=ep.limits.max_body_bytes + 1)):
            pass
    assert s.admission.requests == 0


async def test_bytes_past_the_workers_cap_are_503_while_others_are_in_flight() -> None:
    s, ep, _, _ = serving()
    ep.hold.clear()
    first = asyncio.ensure_future(infer(s, CallMeta("digits")))
    await asyncio.sleep(0.01)
    async with s.admit(CallMeta("digits")) as ticket:
        ticket.reserve(9_000)
        with pytest.raises(TooBusy, match=r"SWITCHYARD_MAX_INFLIGHT_BYTES"):
            ticket.reserve(2_000)  # 11,000 over the 10,000 cap, with another request in flight
    ep.hold.set()
    await first
    assert (s.admission.requests, s.admission.bytes) == (0, 0)


async def test_refusals_at_the_gate_and_by_admission_are_counted_and_take_nothing() -> None:
    s, ep, _, _ = serving(max_requests=1, require_api_key=True)
    before = denied("", "401"), denied("", "429"), denied("gold", "503"), denied("plain", "403")
    with pytest.raises(Unauthorized):
        await infer(s, CallMeta("digits"))
    await infer(s, CallMeta("digits", {"x-api-key": PLAIN}))  # the plain key's one token
    with pytest.raises(RateLimited):
        await infer(s, CallMeta("digits", {"x-api-key": PLAIN}))
    ep.hold.clear()
    first = asyncio.ensure_future(infer(s, CallMeta("digits", {"x-api-key": GOLD})))
    await asyncio.sleep(0.01)
    with pytest.raises(TooBusy):
        await infer(s, CallMeta("digits", {"x-api-key": GOLD}))
    ep.hold.set()
    await first
    after = denied("", "401"), denied("", "429"), denied("gold", "503"), denied("plain", "403")
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0]
    assert (s.admission.requests, s.admission.bytes) == (0, 0) and len(ep.calls) == 2


async def test_an_unknown_endpoint_is_looked_for_once_then_served_or_a_404() -> None:
    """No request queries the control plane: it waits for the engine's next look (created through another
    worker a moment ago: served), else 404. A known, ready endpoint costs no look."""
    s, ep, registry, _ = serving()
    await infer(s, CallMeta("digits"))
    assert registry.looks == 0
    with pytest.raises(NotFound, match="unknown endpoint 'nope'; endpoints: digits"):
        await infer(s, CallMeta("nope"))
    registry.appears = FakeEndpoint("quick")
    assert (await infer(s, CallMeta("quick"))).outputs == [2, 4]
    ep.ready = False  # known but not ready: looked at too, then served as it is (503 from the endpoint)
    await infer(s, CallMeta("digits"))
    assert registry.looks == 3 and s.admission.requests == 0


async def test_pins_follow_one_policy_on_every_protocol() -> None:
    s, ep, registry, _ = serving()
    await infer(s, CallMeta("digits", pin="digits-mlp"))  # REST: the router resolves live names
    await infer(s, CallMeta("digits", pin="abc", stored_pins=True, protocol="oip"))  # a version part
    await infer(s, CallMeta("digits", pin="v9", stored_pins=True, source="playground"))  # a stored version
    assert [c.pin for c in ep.calls] == ["digits-mlp", "digits-mlp:abc", "digits-cnn:v9"]
    assert registry.previews == [("digits", "v9")]
    off, ep_off, registry_off, _ = serving(allow_pinning=False)
    for meta in (CallMeta("digits", pin="digits-mlp"), CallMeta("digits", pin="v9", stored_pins=True)):
        await infer(off, meta)
    assert [c.pin for c in ep_off.calls] == [None, None] and registry_off.previews == []


async def test_a_key_without_the_pin_scope_may_not_pin_on_any_protocol() -> None:
    s, ep, registry, _ = serving()
    for stored in (False, True):
        with pytest.raises(ServingError, match="'pin' scope"):
            await infer(s, CallMeta("digits", {"x-api-key": PLAIN}, pin="abc", stored_pins=stored))
        s.gate.set_keys([(digest(PLAIN), LiveKey("plain", 1000, 1000, frozenset()))])
    assert ep.calls == [] and registry.previews == [] and s.admission.requests == 0
