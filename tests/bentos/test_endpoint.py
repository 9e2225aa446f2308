"""The request path of one endpoint, in process, on real ONNX sessions of digits models."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bentos.config import EndpointConfig
from bentos.dataplane.call import Call
from bentos.dataplane.endpoint import Endpoint, ModelFailure
from bentos.dataplane.metrics import get_metrics
from bentos.dataplane.runtime import LoadedVersion, load_session
from bentos.dataplane.stats import StatsRecorder
from bentos.errors import InvalidInput, TooBusy
from bentos.schemas import DeploymentSpec
from bentos.settings import ServeSettings
from bentos.tasks.image_classification import ImageCodec
from models.families.digits import PREPROCESS, SIGNATURE, splits


class Slow(LoadedVersion):
    def run(self, items: list[Any]) -> list[np.ndarray]:
        time.sleep(0.5)
        return super().run(items)


class Held(LoadedVersion):
    """Does not answer until the test lets it: a primary that waited for it would never answer."""

    release = threading.Event()

    def run(self, items: list[Any]) -> list[np.ndarray]:
        self.release.wait(60)
        return super().run(items)


class Broken(LoadedVersion):
    def run(self, items: list[Any]) -> list[np.ndarray]:
        raise RuntimeError("this version's session raises")


def version(root: Path, key: str, tag: str, cls: type[LoadedVersion] = LoadedVersion) -> LoadedVersion:
    path = root / key / "export" / "model.onnx"
    return cls(tag, "image-classification", "fp32", ImageCodec(SIGNATURE, PREPROCESS), load_session(path, 1), {},
               path.parent)


async def _in_turn(ep: Endpoint, n: int) -> list[Any]:
    return [await ep.handle(ROWS) for _ in range(n)]


def endpoint(versions: dict[str, LoadedVersion], roles: dict[str, tuple[str, int]], **settings: Any) -> Endpoint:
    config = EndpointConfig(name="digits", task="image-classification")
    ep = Endpoint(config, ServeSettings(**settings), get_metrics(), StatsRecorder())
    spec = DeploymentSpec.model_validate(
        {"versions": [{"tag": t, "role": r, "weight": w} for t, (r, w) in roles.items()]})
    ep.swap(1, spec, versions)
    return ep


ROWS = splits()["test"][0][:4].tolist()


@pytest.mark.parametrize("shadow_cls", [Held, Broken])
async def test_shadow_never_delays_or_fails_the_primary(digits_root: Path, shadow_cls: type[LoadedVersion]) -> None:
    alone = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1")}, {"mlp:1": ("stable", 100)})
    baseline = await alone.handle(ROWS)
    shadowed = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                         "cnn:1": version(digits_root, "digits-cnn", "cnn:1", shadow_cls)},
                        {"mlp:1": ("stable", 100), "cnn:1": ("shadow", 0)})
    Held.release.clear()
    try:  # three answers while the shadow has answered none
        answers = await asyncio.wait_for(_in_turn(shadowed, 3), timeout=30)
    finally:
        Held.release.set()
    for answer in answers:
        assert answer.version == "mlp:1" and answer.route == "stable"
        np.testing.assert_allclose(np.stack(answer.outputs), np.stack(baseline.outputs), atol=1e-6)
    await shadowed.stop()
    await alone.stop()


async def test_shadow_queue_is_bounded_and_drops_are_counted(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "slow:1": version(digits_root, "digits-cnn", "slow:1", Slow)},
                  {"mlp:1": ("stable", 100), "slow:1": ("shadow", 0)}, shadow_queue=2)
    dropped = get_metrics().shadow_dropped.labels("digits", "slow:1")
    before = dropped._value.get()
    await asyncio.gather(*(ep.handle(ROWS[:1]) for _ in range(10)))
    assert dropped._value.get() - before == 8
    await ep.stop()


async def test_failing_canary_falls_back_to_stable(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "bad:1": version(digits_root, "digits-cnn", "bad:1", Broken)},
                  {"mlp:1": ("stable", 0), "bad:1": ("canary", 100)}, circuit_failures=3)
    answers = [await ep.handle(ROWS[:1]) for _ in range(6)]
    assert all(a.version == "mlp:1" and a.route == "fallback" for a in answers)
    assert ep.slots["bad:1"].circuit.state.name == "OPEN"  # later requests skip it without trying
    with pytest.raises(ModelFailure) as failure:
        await ep.handle(ROWS[:1], Call(pin="bad:1"))  # a pinned request gets no silent substitute
    assert "session raises" not in str(failure.value)  # the runtime's words are logged, not sent
    await ep.stop()


def counts(ep: Endpoint) -> dict[str, tuple[int, int, int]]:
    """The evidence canary analysis would read: version -> (requests, errors, fallbacks)."""
    out: dict[str, tuple[int, int, int]] = {}
    for _endpoint, version_tag, _bucket, requests, errors, fallbacks, _latency in ep.stats.pending_rows():
        r, e, f = out.get(version_tag, (0, 0, 0))
        out[version_tag] = (r + requests, e + errors, f + fallbacks)
    return out


def half_open(ep: Endpoint, tag: str) -> None:
    from bentos.dataplane.circuit import State

    breaker = ep.slots[tag].circuit
    breaker.state, breaker._opened_at = State.OPEN, time.monotonic() - 3600  # cooled down: the next call probes


async def test_a_half_open_probe_answered_from_the_cache_is_settled(digits_root: Path) -> None:
    from bentos.dataplane.cache import input_key

    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"mlp:1": ("stable", 0), "cnn:1": ("canary", 100)}, cache_size=100)
    cached = await ep.handle(ROWS[:1])
    half_open(ep, "cnn:1")
    ep.cache.put(input_key("cnn:1", ROWS[:1]), cached.outputs)
    assert (await ep.handle(ROWS[:1])).route == "canary"  # the probe, answered from the cache
    after = await ep.handle(ROWS[1:2])  # not cached: must probe the canary again, not skip it for ever
    assert after.route == "canary" and ep.slots["cnn:1"].circuit.state.name == "CLOSED"
    await ep.stop()


async def test_an_overloaded_canary_is_its_error_falls_back_and_settles_its_probe(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"mlp:1": ("stable", 0), "cnn:1": ("canary", 100)})
    half_open(ep, "cnn:1")
    batcher = ep.slots["cnn:1"].queue
    room, batcher.max_queue = batcher.max_queue, 0  # the canary has no room at all
    answer = await ep.handle(ROWS[:1])
    assert answer.version == "mlp:1" and answer.route == "fallback"  # stable had room
    assert counts(ep)["cnn:1"] == (1, 1, 1)  # counted as the canary's error, and its fallback
    assert "mlp:1" not in counts(ep)  # a fallback answer is not stable's evidence
    batcher.max_queue = room
    assert (await ep.handle(ROWS[:1])).route == "canary"  # the probe was settled, so the canary is tried again
    await ep.stop()


async def test_pinned_and_playground_traffic_never_become_rollout_evidence(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"mlp:1": ("stable", 90), "cnn:1": ("canary", 10)})
    for _ in range(3):
        assert (await ep.handle(ROWS[:1], Call(pin="cnn:1"))).route == "pinned"
        await ep.handle(ROWS[:1], Call(source="playground"))
    assert counts(ep) == {}
    answer = await ep.handle(ROWS[:1], Call(routing_key="k"))
    assert counts(ep) == {answer.version: (1, 0, 0)}
    await ep.stop()


async def test_shadow_successes_count_as_well_as_failures(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1"),
                   "bad:1": version(digits_root, "digits-cnn", "bad:1", Broken)},
                  {"mlp:1": ("stable", 100), "cnn:1": ("shadow", 0), "bad:1": ("shadow", 0)})
    for _ in range(4):
        await ep.handle(ROWS[:1])
    await asyncio.gather(*list(ep._background))
    assert counts(ep) == {"mlp:1": (4, 0, 0), "cnn:1": (4, 0, 0), "bad:1": (4, 4, 0)}
    # A copy waits for spare capacity: its time is not a user's, so it is not the version's latency evidence.
    timed = {tag: sum(latency) for _e, tag, _b, _r, _err, _f, latency in ep.stats.pending_rows()}
    assert timed == {"mlp:1": 4, "cnn:1": 0, "bad:1": 0}
    await ep.stop()


@pytest.mark.parametrize(("sample", "compared"), [(1.0, 6), (0.0, 0)])
async def test_a_sample_of_canary_answers_is_compared_with_stable(digits_root: Path, sample: float,
                                                                  compared: int) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"mlp:1": ("stable", 0), "cnn:1": ("canary", 100)}, canary_compare_sample=sample)
    for _ in range(3):  # one at a time: a copy waits for spare capacity, so none is dropped here
        assert (await ep.handle(ROWS[:2])).route == "canary"
        await asyncio.gather(*list(ep._background))
    agreement = {(version_tag, n) for _e, version_tag, _b, n, _total in ep.stats.pending_agreement()}
    assert agreement == ({("cnn:1", compared)} if compared else set())  # judged: the canary
    assert counts(ep) == {"cnn:1": (3, 0, 0)}  # stable's background answers are not its evidence
    await ep.stop()


def with_sample(ep: Endpoint, sample: float) -> None:
    assert ep.spec is not None
    ep.swap(ep.revision + 1, ep.spec.model_copy(update={"shadow_sample": sample}), {})


@pytest.mark.parametrize(("sample", "copied"), [(0.0, 0), (100.0, 4)])
async def test_the_shadow_sample_sets_how_many_requests_are_copied(digits_root: Path, sample: float,
                                                                   copied: int) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"mlp:1": ("stable", 100), "cnn:1": ("shadow", 0)})
    with_sample(ep, sample)
    for _ in range(4):
        await ep.handle(ROWS[:1])
        await asyncio.gather(*list(ep._background))
    assert counts(ep).get("cnn:1", (0, 0, 0))[0] == copied
    await ep.stop()


async def test_a_shadow_copy_is_dropped_and_counted_while_users_wait(digits_root: Path) -> None:
    ep = endpoint({"slow:1": version(digits_root, "digits-mlp", "slow:1", Slow),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1")},
                  {"slow:1": ("stable", 100), "cnn:1": ("shadow", 0)})
    dropped = get_metrics().shadow_dropped.labels("digits", "cnn:1")
    before = dropped._value.get()
    first = asyncio.ensure_future(ep.handle(ROWS[:1]))
    await asyncio.sleep(0.1)  # the first request is in the model
    second = asyncio.ensure_future(ep.handle(ROWS[1:2]))
    await asyncio.sleep(0.1)
    assert ep.slots["slow:1"].queue.busy
    ep._mirror("cnn:1", ROWS[:1], "slow:1", [np.zeros(10)])  # a copy offered now has no spare capacity
    assert dropped._value.get() - before == 1
    await asyncio.gather(first, second)
    await ep.stop()


async def test_previews_are_bounded_and_an_lru_one_goes_only_after_it_idled(digits_root: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bentos.dataplane import endpoint as module

    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1")}, {"mlp:1": ("stable", 100)})
    monkeypatch.setattr(module, "PREVIEW_MIN_IDLE_S", 0.3)
    for i in range(module.PREVIEW_SLOTS):
        ep.add_preview(version(digits_root, "digits-mlp", f"p:{i}"))
    with pytest.raises(TooBusy, match="preview slots"):  # all were used just now: no thrashing
        ep.add_preview(version(digits_root, "digits-mlp", "p:new"))
    await asyncio.sleep(0.4)
    await ep.handle(ROWS[:1], Call(pin="p:0"))  # p:0 is used again; p:1 is now the least recently used
    ep.add_preview(version(digits_root, "digits-mlp", "p:new"))
    assert set(ep.previews) == {"p:0", "p:2", "p:3", "p:new"}
    await ep.stop()


class Picky(LoadedVersion):
    """A version that, like an image codec given a blank or corrupt image, refuses some inputs in its batch."""

    def run(self, items: list[Any]) -> list[np.ndarray]:
        if any(float(np.asarray(i).sum()) == 0.0 for i in items):
            raise InvalidInput("images", "could not be read as an image: the image is empty")
        return super().run(items)


async def test_input_refused_inside_the_batch_never_counts_against_the_version(digits_root: Path) -> None:
    """Five blank digits sent to a canary once opened its breaker; with sticky keys a caller could force a
    rollback. Now: a 422 for the caller, the breaker closed, no evidence, no fallback, and the other
    requests of the same batch answered."""
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "cnn:1": version(digits_root, "digits-cnn", "cnn:1", Picky)},
                  {"mlp:1": ("stable", 0), "cnn:1": ("canary", 100)}, circuit_failures=3)
    blank = [[0.0] * 64]
    outcomes = await asyncio.gather(*(ep.handle(blank) for _ in range(6)), ep.handle(ROWS[:1]),
                                    return_exceptions=True)
    assert all(isinstance(o, InvalidInput) for o in outcomes[:6]), outcomes
    assert outcomes[6].version == "cnn:1" and outcomes[6].route == "canary"  # type: ignore[union-attr]
    assert ep.slots["cnn:1"].circuit.state.name == "CLOSED"
    assert counts(ep) == {"cnn:1": (1, 0, 0)}  # only the good request is evidence
    invalid = get_metrics().requests.labels("digits", "cnn:1", "canary", "invalid", "api", "", "rest")
    assert invalid._value.get() >= 6
    await ep.stop()


def test_a_generation_prompt_may_have_as_many_characters_as_its_tokens_allow() -> None:
    from bentos.dataplane.endpoint import CHARS_PER_PROMPT_TOKEN, effective_limits

    settings = ServeSettings(max_chars=2000, max_prompt_tokens=1024)
    writer = effective_limits(EndpointConfig(name="w", task="text-generation"), settings)
    assert writer.max_chars == CHARS_PER_PROMPT_TOKEN * 1024  # not the text tasks' 2,000
    tight = effective_limits(EndpointConfig(name="w", task="text-generation", limits={"max_chars": 300}), settings)
    assert tight.max_chars == 300  # the endpoint's own cap wins
    assert effective_limits(EndpointConfig(name="t", task="text-classification"), settings).max_chars == 2000
