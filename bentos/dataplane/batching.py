"""Adaptive batching: one queue per live model version.

An idle model runs whatever is queued at once. While a batch runs, requests pile up,
and the next batch takes up to `max_batch_size` rows, optionally waiting `max_wait_s`
for a fuller one. Inference runs in the version's own thread (ONNX Runtime releases the
GIL), so the event loop keeps accepting requests. A request is refused only when its
deadline passes or the queue is full, never because a batch is forming.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bentos.errors import DeadlineExceeded, QueueFull

__all__ = ["AdaptiveBatcher", "BatchSizeMismatch", "DeadlineExceeded", "QueueFull", "Timing"]

RunBatch = Callable[[list[Any]], Sequence[Any]]


class BatchSizeMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class Timing:
    queue_s: float
    inference_s: float
    batch_rows: int


@dataclass(eq=False)  # identity: rows may be arrays, which have no single truth value
class _Pending:
    rows: list[Any]
    future: asyncio.Future[tuple[list[Any], Timing]]
    deadline: float
    bucket: int
    enqueued: float = field(default_factory=time.monotonic)




class AdaptiveBatcher:
    def __init__(self, run_batch: RunBatch, *, max_batch_size: int, max_queue: int, max_wait_s: float = 0.0,
                 name: str = "batcher", in_flight: int = 1) -> None:
        """`in_flight`: batches in the model at once, each on its own thread (the session must allow
        concurrent runs, as ONNX Runtime's does)."""
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.name = name
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self.in_flight = in_flight
        self._executor = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        # Batches taken from the queue and not yet answered, by the task that runs each. A task may not have run
        # a step yet: it counts as busy all the same, and `stop` answers its requests itself (a task cancelled
        # before its first step never reaches an `except` of its own).
        self._running: dict[asyncio.Task[None], list[_Pending]] = {}
        self._stopped = False

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    @property
    def requests_in_flight(self) -> int:
        """Requests waiting or in a batch in the model."""
        return len(self._queue) + sum(len(batch) for batch in self._running.values())

    @property
    def busy(self) -> bool:
        """A batch is in the model or requests are waiting: no spare capacity for background work."""
        return bool(self._queue) or bool(self._running)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Stop now: every request still here, queued or in a batch in the model, gets an answer (an
        Overloaded error) instead of waiting for ever. `drain_and_stop` lets them finish first."""
        self._stopped = True
        batches = list(self._running.values())
        tasks = [*([self._task] if self._task is not None else []), *self._running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._running.clear()
        _fail([*(p for batch in batches for p in batch), *self._queue], QueueFull(f"{self.name} is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def drain_and_stop(self, grace_s: float = 30.0) -> None:
        """Let queued requests, and the batch in the model, finish (up to `grace_s`), then stop."""
        end = time.monotonic() + grace_s
        while self.busy and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await self.stop()

    async def submit(self, rows: list[Any], deadline: float, bucket: int = 0) -> tuple[list[Any], Timing]:
        """Queue one request's rows; returns one result per row and the request's timing."""
        if self._stopped:
            raise QueueFull(f"{self.name} is shutting down")
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{self.name}: {self.max_queue} requests already queued (SWITCHYARD_MAX_QUEUE)")
        self.start()
        future: asyncio.Future[tuple[list[Any], Timing]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(rows, future, deadline, bucket))
        self._queued_rows += len(rows)
        self._has_items.set()
        if self._queued_rows >= self.max_batch_size:
            self._full.set()
        return await future

    async def _loop(self) -> None:
        while True:
            await self._has_items.wait()
            # The next batch forms only when the model can take it: requests that arrive meanwhile join it.
            while len(self._running) >= self.in_flight:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            if self.max_wait_s > 0:
                await self._wait_for_fuller_batch()
            batch = self._take_batch()
            if not self._queue:
                self._has_items.clear()
            if batch:
                self._running[asyncio.get_running_loop().create_task(self._answer(batch))] = batch

    async def _answer(self, batch: list[_Pending]) -> None:
        try:
            await self._run(batch)
        finally:
            # Here, not in a done callback: the batch's callers resume after this step, and a shadow copy that
            # one of them starts asks `busy` first; a callback would still count the batch then.
            self._running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    async def _wait_for_fuller_batch(self) -> None:
        """Wait up to max_wait_s, waking early once a full batch is queued."""
        deadline = time.monotonic() + self.max_wait_s
        while self._queued_rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        now = time.monotonic()
        # A request whose caller is gone (its task was cancelled: a disconnect, a timeout, a cancelled
        # RPC) has a cancelled future: its rows would cost model time for an answer nobody reads.
        for pending in [p for p in self._queue if p.deadline <= now or p.future.done()]:
            self._remove(pending)
            if not pending.future.done():
                pending.future.set_exception(DeadlineExceeded(f"{self.name}: deadline passed while queued"))
        if not self._queue:
            return []
        # The oldest request always goes first, so no length class starves; the rest of the batch
        # comes from its own length class only: filling it from the neighbouring classes too padded
        # rows up to twice their length, which cost more than the fuller batch saved on mixed-length text.
        head = self._queue[0]
        batch, rows = [head], len(head.rows)
        for pending in list(self._queue)[1:]:
            if rows >= self.max_batch_size:
                break
            if pending.bucket == head.bucket and rows + len(pending.rows) <= self.max_batch_size:
                batch.append(pending)
                rows += len(pending.rows)
        for pending in batch:
            self._remove(pending)
        if self._queued_rows < self.max_batch_size:
            self._full.clear()
        return batch

    def _remove(self, pending: _Pending) -> None:
        self._queue.remove(pending)
        self._queued_rows -= len(pending.rows)

    async def _call(self, rows: list[Any]) -> Sequence[Any]:
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, rows)
        if len(results) != len(rows):
            raise BatchSizeMismatch(f"{self.name}: model returned {len(results)} results for {len(rows)} inputs")
        return results

    async def _run(self, batch: list[_Pending]) -> None:
        rows = [row for pending in batch for row in pending.rows]
        start = time.monotonic()
        try:
            results = await self._call(rows)
        except BatchSizeMismatch as exc:
            _fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
                return
            # Isolate the bad input: retry request by request, so only its own request fails.
            for pending in batch:
                await self._run([pending])
            return
        inference = time.monotonic() - start
        offset = 0
        for pending in batch:
            n = len(pending.rows)
            if not pending.future.done():
                timing = Timing(queue_s=start - pending.enqueued, inference_s=inference, batch_rows=len(rows))
                pending.future.set_result((list(results[offset:offset + n]), timing))
            offset += n


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
