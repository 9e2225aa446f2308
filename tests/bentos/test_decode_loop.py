"""The decode loop on a real tiny GPT-2: late joiners share steps, aborts free their KV at the next step,
a request that cannot fit the KV budget waits and is refused at its deadline, and stop strings end a stream."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bentos.dataplane.decode.loop import DecodeLoop, StepStats
from bentos.dataplane.decode.runner import DecodeRunner
from bentos.dataplane.runtime import load_session
from bentos.errors import InvalidInput, Overloaded
from bentos.tasks.base import Limits
from bentos.tasks.text_generation import GenerationCodec, SamplingParams


def make_loop(graph: Path, prefill_tokens: int = 512, **limits: float) -> tuple[DecodeLoop, list[StepStats]]:
    codec = GenerationCodec({"inputs": [], "outputs": []}, json.loads((graph / "meta.json").read_text()), graph)
    steps: list[StepStats] = []
    base = Limits(max_rows=1, max_chars=1000, max_body_bytes=10_000, max_image_pixels=1, prefix_cache_share=0)
    loop = DecodeLoop("t", DecodeRunner(load_session(graph / "model.onnx", 1, cpu_only=True), codec),
                      codec, base.model_copy(update=limits), prefill_tokens=prefill_tokens, on_step=steps.append)
    return loop, steps


def ids(loop: DecodeLoop, text: str) -> list[int]:
    return loop.codec.tokenize(text)


async def read_all(flight) -> str:  # type: ignore[no-untyped-def]
    while await flight.stream.next_piece() is not None:
        pass
    return flight.stream.text


async def test_a_late_joiner_shares_decode_steps(tiny_lm_graphs: dict[str, Path]) -> None:
    loop, steps = make_loop(tiny_lm_graphs["gpt2"])
    # ignore_eos: the first must still be decoding when the second joins (the tiny LM may end a text early).
    first = await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=120, ignore_eos=True),
                             time.monotonic() + 30)
    reader = asyncio.create_task(read_all(first))
    while first.stream.usage.completion_tokens < 5:
        await asyncio.sleep(0.001)
    second = await loop.start(ids(loop, "The dog"), SamplingParams(max_tokens=10), time.monotonic() + 30)
    await read_all(second)
    await reader
    assert max(s.batch for s in steps) == 2
    assert first.stream.usage.completion_tokens > 0 and second.stream.finish_reason in ("length", "stop")
    assert loop.streams == 0 and loop.scheduler.budget.used == 0
    await loop.stop()


async def test_an_abort_frees_the_slot_and_the_kv_at_the_next_step(tiny_lm_graphs: dict[str, Path]) -> None:
    loop, _ = make_loop(tiny_lm_graphs["gpt2"])
    flight = await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=200, ignore_eos=True),
                              time.monotonic() + 10)
    assert loop.streams == 1 and loop.scheduler.budget.used > 0
    loop.abort(flight.request_id)
    await asyncio.wait_for(flight.done.wait(), 5)
    assert loop.streams == 0 and loop.scheduler.budget.used == 0
    for _ in range(100):  # the loop drops the rows before it goes idle
        if loop.runner.rows == 0:
            break
        await asyncio.sleep(0.01)
    assert loop.runner.rows == 0
    await loop.stop()


async def test_a_request_over_the_free_kv_waits_then_gets_503(tiny_lm_graphs: dict[str, Path]) -> None:
    meta = json.loads((tiny_lm_graphs["gpt2"] / "meta.json").read_text())["generation"]
    per_token = 2 * meta["layers"] * meta["kv_heads"] * meta["head_dim"] * 4
    loop, _ = make_loop(tiny_lm_graphs["gpt2"], kv_cache_bytes=per_token * 150)
    holder = await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=140, ignore_eos=True),
                              time.monotonic() + 10)
    with pytest.raises(Overloaded) as refused:
        await loop.start(ids(loop, "The dog"), SamplingParams(max_tokens=100), time.monotonic() + 0.3)
    assert "Retry-After" in refused.value.headers and "limits.kv_cache_bytes" in refused.value.message
    with pytest.raises(InvalidInput, match="KV budget"):  # could never fit: the caller's to change
        await loop.start(ids(loop, "The dog"), SamplingParams(max_tokens=400), time.monotonic() + 1)
    loop.abort(holder.request_id)
    await asyncio.wait_for(holder.done.wait(), 5)
    fits = await loop.start(ids(loop, "The dog"), SamplingParams(max_tokens=5), time.monotonic() + 5)
    assert await read_all(fits)
    await loop.stop()


async def test_a_stop_string_ends_the_text_before_it(tiny_lm_graphs: dict[str, Path]) -> None:
    loop, _ = make_loop(tiny_lm_graphs["gpt2"])
    whole = await read_all(await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=30),
                                            time.monotonic() + 10))
    assert " the " in whole, whole
    cut = await read_all(await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=30, stop=(" the ",)),
                                          time.monotonic() + 10))
    assert cut == whole[:whole.index(" the ")]
    await loop.stop()


async def test_a_preempted_stream_pauses_then_writes_the_same_text(tiny_lm_graphs: dict[str, Path]) -> None:
    """One stream at a time: a high-priority request takes the slot of a running low one, whose KV is freed;
    it resumes afterwards by prefilling what it wrote, and its greedy text is the text it writes alone."""
    prompt, params = "The cat", SamplingParams(max_tokens=48, ignore_eos=True)
    alone, _ = make_loop(tiny_lm_graphs["gpt2"], max_streams=1)
    expected = await read_all(await alone.start(ids(alone, prompt), params, time.monotonic() + 30))
    await alone.stop()

    loop, steps = make_loop(tiny_lm_graphs["gpt2"], max_streams=1)
    low = await loop.start(ids(loop, prompt), params, time.monotonic() + 30, priority=0)
    reader = asyncio.create_task(read_all(low))
    while low.stream.usage.completion_tokens < 8:
        await asyncio.sleep(0.001)
    high = await loop.start(ids(loop, "The dog"), SamplingParams(max_tokens=12), time.monotonic() + 30, priority=2)
    paused_at = low.stream.usage.completion_tokens
    assert paused_at < params.max_tokens and low.stream.finish_reason is None  # it took the slot mid-stream
    await read_all(high)
    assert low.stream.usage.completion_tokens <= paused_at + 1  # it wrote nothing while the high one ran
    assert await reader == expected and low.stream.finish_reason == "length"
    assert max(s.batch for s in steps) == 1 and loop.scheduler.budget.used == 0
    await loop.stop()


async def test_a_lone_stream_decodes_in_bursts_without_a_plan_per_token(tiny_lm_graphs: dict[str, Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two tokens of a decode-only plan the version's thread steps again at once (no round trip through
    the event loop); the stream's end ends the burst, and the runner forgets the request after it."""
    from bentos.dataplane.decode import loop as loop_module

    monkeypatch.setattr(loop_module, "MAX_BURST_S", 60.0)  # only events end a burst here, not the clock
    loop, steps = make_loop(tiny_lm_graphs["gpt2"])
    plans = 0
    plan = loop.scheduler.plan

    def counted(now: float):  # type: ignore[no-untyped-def]
        nonlocal plans
        plans += 1
        return plan(now)

    loop.scheduler.plan = counted  # type: ignore[method-assign]
    flight = await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=100, ignore_eos=True),
                              time.monotonic() + 30)
    await read_all(flight)
    assert flight.stream.usage.completion_tokens == 100 and len(steps) >= 100
    assert plans <= 4, plans  # the prefill, one burst of 99 decode steps, and the loop's look once it ended
    for _ in range(200):
        if loop.runner.rows == 0:
            break
        await asyncio.sleep(0.01)
    assert loop.runner.rows == 0 and not loop._released  # its rows went once the burst ended
    again = await loop.start(ids(loop, "The cat"), SamplingParams(max_tokens=100, ignore_eos=True),
                             time.monotonic() + 30)
    assert await read_all(again) == flight.stream.text  # greedy: the same text, burst or not
    await loop.stop()


async def test_a_newcomer_ends_a_chunk_step_after_one_pass_and_the_chunks_go_on_after_its_first_token(
        tiny_lm_graphs: dict[str, Path]) -> None:
    """A 64-token budget runs a long prompt's chunk in passes of 16: a short request that arrives during the first
    pass gets its step once that pass ends, not after the chunk's 64 tokens; the long prompt's text is unchanged."""
    import threading

    loop, _ = make_loop(tiny_lm_graphs["gpt2"], prefill_tokens=64)
    runner = loop.runner
    events: list[tuple[str, object]] = []
    entered = threading.Event()
    chunk, prefill = runner._chunk, runner._prefill

    def chunk_pass(rid, n, tokens):  # type: ignore[no-untyped-def]
        events.append(("chunk", n))
        if len(events) == 1:  # the first pass waits, on the version's thread, until the newcomer is queued
            entered.set()
            end = time.monotonic() + 10
            while not loop._replan and time.monotonic() < end:
                time.sleep(0.001)
        return chunk(rid, n, tokens)

    def whole(ids_, tokens):  # type: ignore[no-untyped-def]
        events.append(("prefill", tuple(ids_)))
        return prefill(ids_, tokens)

    runner._chunk, runner._prefill = chunk_pass, whole  # type: ignore[method-assign]
    long_ids = ids(loop, " ".join(["The old man found a wooden box in the river"] * 12))
    assert len(long_ids) > 100
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    long_start = asyncio.create_task(loop.start(long_ids, params, time.monotonic() + 30))
    assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
    short = await loop.start(ids(loop, "The cat"), params, time.monotonic() + 30)
    assert not long_start.done()  # the short prompt's first token came first
    assert events[:2] == [("chunk", 16), ("prefill", (short.request_id,))]  # one pass of the chunk, then its step
    long_text = await read_all(await long_start)
    assert sum(n for kind, n in events if kind == "chunk") == len(long_ids)  # every pass ran once, none twice
    await read_all(short)
    runner._chunk, runner._prefill = chunk, prefill  # type: ignore[method-assign]
    again = await loop.start(long_ids, params, time.monotonic() + 30)
    assert await read_all(again) == long_text  # greedy: the same text, interrupted or not
    await loop.stop()
