"""The adaptive batcher, deterministically: huge timeouts and asyncio.gather, as in Ray Serve."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from bentos.dataplane.batching import AdaptiveBatcher, BatchSizeMismatch, DeadlineExceeded, QueueFull
from bentos.tasks.base import length_bucket

FAR = 1e9  # a deadline that never passes


class Model:
    """Records every batch; can be held mid-batch to let requests pile up."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, rows: list[Any]) -> list[Any]:
        self.started.set()
        self.gate.wait(10)
        self.batches.append(list(rows))
        if "bad" in rows:
            raise ValueError("bad row")
        return [f"out:{r}" for r in rows]


def deadline() -> float:
    return time.monotonic() + FAR


async def test_idle_model_runs_a_single_request_without_waiting() -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, max_batch_size=32, max_queue=10)
    out, timing = await asyncio.wait_for(batcher.submit(["a"], deadline()), 5)
    assert out == ["out:a"] and timing.batch_rows == 1 and model.batches == [["a"]]
    await batcher.stop()


async def test_full_batch_forms_when_waiting_is_allowed() -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, max_batch_size=4, max_queue=10, max_wait_s=FAR)
    results = await asyncio.gather(*(batcher.submit([i], deadline()) for i in range(4)))
    assert [r[0] for r in results] == [[f"out:{i}"] for i in range(4)]
    assert model.batches == [[0, 1, 2, 3]]  # the huge wait ended early: the batch was full
    await batcher.stop()


async def test_requests_accumulate_while_a_batch_runs() -> None:
    model = Model()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_queue=100)
    first = asyncio.ensure_future(batcher.submit(["first"], deadline()))
    await asyncio.to_thread(model.started.wait, 5)
    rest = [asyncio.ensure_future(batcher.submit([i], deadline())) for i in range(5)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [["first"], [0, 1, 2, 3, 4]]
    assert (await rest[0])[1].batch_rows == 5
    await batcher.stop()


async def test_batch_never_exceeds_max_rows_and_requests_stay_whole() -> None:
    model = Model()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=4, max_queue=100)
    blocker = asyncio.ensure_future(batcher.submit(["x"], deadline()))
    await asyncio.to_thread(model.started.wait, 5)
    reqs = [asyncio.ensure_future(batcher.submit([f"{i}a", f"{i}b", f"{i}c"], deadline())) for i in range(3)]
    await asyncio.sleep(0.05)
    model.gate.set()
    outs = await asyncio.gather(blocker, *reqs)
    assert all(len(b) <= 4 for b in model.batches[1:])
    assert [o[0] for o in outs[1:]] == [[f"out:{i}a", f"out:{i}b", f"out:{i}c"] for i in range(3)]
    await batcher.stop()


async def test_one_result_per_input_or_every_request_fails() -> None:
    batcher = AdaptiveBatcher(lambda rows: ["only one"], max_batch_size=8, max_queue=10, max_wait_s=FAR)
    results = await asyncio.gather(*(batcher.submit([i], deadline()) for i in range(8)), return_exceptions=True)
    assert all(isinstance(r, BatchSizeMismatch) for r in results)
    assert "returned 1 results for 8 inputs" in str(results[0])
    await batcher.stop()


async def test_a_bad_row_fails_only_its_own_request() -> None:
    model = Model()
    batcher = AdaptiveBatcher(model, max_batch_size=3, max_queue=10, max_wait_s=FAR)
    results = await asyncio.gather(batcher.submit(["a"], deadline()), batcher.submit(["bad"], deadline()),
                                   batcher.submit(["c"], deadline()), return_exceptions=True)
    assert results[0][0] == ["out:a"] and results[2][0] == ["out:c"]  # type: ignore[index]
    assert isinstance(results[1], ValueError)
    await batcher.stop()


async def test_full_queue_is_refused_with_a_clear_reason() -> None:
    model = Model()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=1, max_queue=2)
    running = asyncio.ensure_future(batcher.submit(["run"], deadline()))
    await asyncio.to_thread(model.started.wait, 5)
    queued = [asyncio.ensure_future(batcher.submit([i], deadline())) for i in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="SWITCHYARD_MAX_QUEUE"):
        await batcher.submit(["one too many"], deadline())
    model.gate.set()
    await asyncio.gather(running, *queued)
    await batcher.stop()


async def test_only_requests_past_their_deadline_are_shed() -> None:
    model = Model()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_queue=10)
    running = asyncio.ensure_future(batcher.submit(["run"], deadline()))
    await asyncio.to_thread(model.started.wait, 5)
    late = asyncio.ensure_future(batcher.submit(["late"], time.monotonic() + 0.01))
    fine = asyncio.ensure_future(batcher.submit(["fine"], deadline()))
    await asyncio.sleep(0.05)
    model.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    assert (await fine)[0] == ["out:fine"]
    await running
    await batcher.stop()


async def test_length_buckets_group_similar_inputs_and_oldest_goes_first() -> None:
    model = Model()
    model.gate.clear()
    batcher = AdaptiveBatcher(model, max_batch_size=3, max_queue=100)
    blocker = asyncio.ensure_future(batcher.submit(["x"], deadline()))
    await asyncio.to_thread(model.started.wait, 5)
    lengths = [60, 5, 58, 12, 6, 61, 7]  # tokens; arrival order
    reqs = [asyncio.ensure_future(batcher.submit([f"len{n}"], deadline(), length_bucket(n))) for n in lengths]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(blocker, *reqs)
    # 12 tokens is the next class up from 5-7: it waits for a batch of its own rather than pad them to 12.
    assert model.batches[1:] == [["len60", "len58", "len61"], ["len5", "len6", "len7"], ["len12"]]
    await batcher.stop()


def test_length_bucket_classes() -> None:
    assert [length_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [0, 1, 2, 2, 3, 3, 4, 4, 5]


async def test_array_rows_from_many_requests_share_a_batch() -> None:
    """Rows are numpy arrays for image and tensor tasks: queued requests must compare by identity."""
    import numpy as np

    seen: list[int] = []

    def model(rows: list[Any]) -> list[Any]:
        seen.append(len(rows))
        time.sleep(0.01)
        return [float(r.sum()) for r in rows]

    batcher = AdaptiveBatcher(model, max_batch_size=32, max_queue=100)
    results = await asyncio.wait_for(asyncio.gather(
        *(batcher.submit([np.full(4, float(i))], deadline()) for i in range(40))), 30)
    assert [r[0][0] for r in results] == [4.0 * i for i in range(40)]
    assert max(seen) > 1  # requests really were batched together
    await batcher.stop()


async def test_busy_while_a_batch_is_in_the_model_or_requests_wait() -> None:
    """What decides whether a shadow copy may run (spare capacity means neither), and what autoscaling
    reads: requests waiting, and requests waiting or in the model."""
    model = Model()
    model.gate.clear()
    b = AdaptiveBatcher(model, max_batch_size=1, max_queue=10, name="busy")
    assert not b.busy and b.requests_in_flight == 0
    first = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.to_thread(model.started.wait, 10)
    assert b.busy and b.queue_depth == 0 and b.requests_in_flight == 1  # in the model, nothing waiting
    second = asyncio.ensure_future(b.submit(["b"], deadline()))
    await asyncio.sleep(0)
    assert b.busy and b.queue_depth == 1 and b.requests_in_flight == 2
    model.gate.set()
    await asyncio.gather(first, second)
    assert not b.busy and b.requests_in_flight == 0
    await b.stop()


async def test_stopping_with_a_batch_in_the_model_answers_its_requests_instead_of_hanging() -> None:
    """A retired version's batcher was stopped while a batch ran: its requests waited for ever (a client
    saw a 30 s timeout in CI). Now they get an Overloaded error, and later submissions too."""
    model = Model()
    model.gate.clear()
    b = AdaptiveBatcher(model, max_batch_size=8, max_queue=16)
    first = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.to_thread(model.started.wait, 10)  # "a" is in the model
    queued = asyncio.ensure_future(b.submit(["b"], deadline()))
    await asyncio.sleep(0)
    await b.stop()
    model.gate.set()
    for request in (first, queued):
        with pytest.raises(QueueFull, match="shutting down"):
            await asyncio.wait_for(request, 5)
    with pytest.raises(QueueFull, match="shutting down"):
        await b.submit(["c"], deadline())


async def test_draining_waits_for_the_batch_in_the_model() -> None:
    model = Model()
    model.gate.clear()
    b = AdaptiveBatcher(model, max_batch_size=8, max_queue=16)
    request = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.to_thread(model.started.wait, 10)
    drain = asyncio.ensure_future(b.drain_and_stop(grace_s=30))
    await asyncio.sleep(0.2)
    assert not drain.done()  # the batch is still in the model
    model.gate.set()
    assert (await asyncio.wait_for(request, 5))[0] == ["out:a"]
    await asyncio.wait_for(drain, 5)


async def test_a_caller_resuming_with_its_answer_finds_the_model_idle() -> None:
    """A shadow copy runs only on spare capacity, and the request just answered starts it as it resumes: the
    batch that answered it must not count as busy then (a shadow step saw no copies at all when it did)."""
    b = AdaptiveBatcher(Model(), max_batch_size=8, max_queue=16)
    assert (await b.submit(["a"], deadline()))[0] == ["out:a"]
    assert not b.busy and b.requests_in_flight == 0
    await b.stop()


async def _taken_not_started(b: AdaptiveBatcher) -> asyncio.Future[Any]:
    """A request the batcher's loop has taken into a batch whose task has not run a step yet: the state a
    retired version's batcher was stopped in when a client waited 30 s (CI, a promotion under traffic)."""
    request = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.sleep(0)  # submitted: queued, and the loop started
    assert b.queue_depth == 1
    await asyncio.sleep(0)  # the loop took it into a batch and scheduled the batch's task
    assert b.queue_depth == 0
    return request


async def test_a_batch_taken_but_not_started_counts_as_busy_and_drains() -> None:
    b = AdaptiveBatcher(Model(), max_batch_size=8, max_queue=16)
    request = await _taken_not_started(b)
    assert b.busy and b.requests_in_flight == 1
    await asyncio.wait_for(b.drain_and_stop(grace_s=30), 5)
    assert (await asyncio.wait_for(request, 5))[0] == ["out:a"]


async def test_stopping_before_a_taken_batch_starts_answers_its_requests() -> None:
    b = AdaptiveBatcher(Model(), max_batch_size=8, max_queue=16)
    request = await _taken_not_started(b)
    await b.stop()  # cancels the batch's task before its first step: no `except` of its own ever runs
    with pytest.raises(QueueFull, match="shutting down"):
        await asyncio.wait_for(request, 5)


class Pair:
    """A model that finishes a batch only once two batches are in it at the same time."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)
        self.batches: list[list[Any]] = []

    def __call__(self, rows: list[Any]) -> list[Any]:
        self.barrier.wait()  # BrokenBarrierError after 10 s unless a second batch runs beside this one
        self.batches.append(list(rows))
        return [f"out:{r}" for r in rows]


async def test_two_batches_in_flight_run_at_once_and_the_next_forms_from_what_waited() -> None:
    model = Pair()
    b = AdaptiveBatcher(model, max_batch_size=8, max_queue=16, in_flight=2)
    first = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.sleep(0.05)  # "a" is in the model alone
    second = asyncio.ensure_future(b.submit(["b"], deadline()))
    assert [r[0] for r in await asyncio.wait_for(asyncio.gather(first, second), 15)] == [["out:a"], ["out:b"]]
    await b.stop()


async def test_stopping_answers_every_batch_in_flight() -> None:
    model = Model()
    model.gate.clear()
    b = AdaptiveBatcher(model, max_batch_size=1, max_queue=16, in_flight=2)
    requests = [asyncio.ensure_future(b.submit([x], deadline())) for x in "abc"]
    await asyncio.sleep(0.1)  # a and b in the model, c queued
    await b.stop()
    model.gate.set()
    for request in requests:
        with pytest.raises(QueueFull, match="shutting down"):
            await asyncio.wait_for(request, 5)


async def test_a_cancelled_requests_rows_are_not_run() -> None:
    """A caller that is gone (its task cancelled: a disconnect, a timeout, a cancelled RPC) costs no model time."""
    model = Model()
    model.gate.clear()
    b = AdaptiveBatcher(model, max_batch_size=8, max_queue=16)
    first = asyncio.ensure_future(b.submit(["a"], deadline()))
    await asyncio.to_thread(model.started.wait, 10)  # "a" is in the model; the next two wait
    gone = asyncio.ensure_future(b.submit(["gone"], deadline()))
    kept = asyncio.ensure_future(b.submit(["kept"], deadline()))
    await asyncio.sleep(0.05)
    gone.cancel()
    model.gate.set()
    assert (await asyncio.wait_for(kept, 5))[0] == ["out:kept"]
    await first
    assert model.batches == [["a"], ["kept"]] and gone.cancelled() and b.queue_depth == 0
    await b.stop()
