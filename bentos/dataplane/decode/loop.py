"""One generative version's decode loop: the asyncio task that turns scheduler plans into tokens.

Each turn: slow readers are held (their KV kept), the scheduler plans the step, the runner executes it
on the version's thread, the new tokens go to their streams, and requests that finished or were aborted
leave at once, their KV freed. A plan that only decodes is run again on the version's thread, step after
step, until something happens that the next plan must see (`_steps`): each step's tokens go to the streams
as they come, and the loop's round trip (two thread wake-ups, a plan: about 0.4 ms a token here, a quarter
of a small model's step) is off the path between two tokens. A step's newcomers get their first tokens as
soon as their prefill ends, before the running requests decode (`_hand_out`, called from the version's
thread). `start` returns only once the request's first token exists (or it was refused), so that every
refusal before it is an ordinary status: the response's status is committed late.

It is the slot's queue (`SlotQueue`): draining lets the streams in flight finish; stopping ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bentos.dataplane.decode.constraints import Grammars
from bentos.dataplane.decode.heap import keep_freed_memory
from bentos.dataplane.decode.kv_budget import KvBudget, bytes_per_token
from bentos.dataplane.decode.prefix_cache import PrefixCache
from bentos.dataplane.decode.runner import DecodeRunner, StepResult
from bentos.dataplane.decode.scheduler import PRIORITIES, DecodeScheduler, Sequence, StepPlan
from bentos.dataplane.decode.shares import FairShare
from bentos.dataplane.decode.speculation import Speculation
from bentos.dataplane.decode.streams import TokenStream
from bentos.dataplane.decode.verdict import log_softmax
from bentos.errors import DeadlineExceeded, InvalidInput, ModelFailure, Overloaded, ServingError
from bentos.tasks.base import Limits, length_bucket
from bentos.tasks.text_generation import GenerationCodec, SamplingParams

log = logging.getLogger("switchyard.decode")
IDLE_POLL_S = 0.005  # every running reader is slow: look again this soon
# A burst of repeated decode steps (DecodeLoop._steps) ends this soon at the latest, so that waiting requests'
# deadlines and shares are looked at again; anything the next plan must see (a newcomer, an abort, a finished
# or slow stream) ends it at once.
MAX_BURST_S = 0.05
# A step's chunks run in passes of a quarter of the prefill budget (at least 16 tokens), and anything the next
# plan must see ends the step between two passes: a newcomer waits for one pass, not a whole chunk.
CHUNK_PASSES, MIN_PASS_TOKENS = 4, 16
_ids = itertools.count()


@dataclass
class Flight:
    """One request in the loop: its stream, the future its first token resolves, and its clock."""

    request_id: str
    stream: TokenStream
    first: asyncio.Future[None]
    started: float
    first_token_at: float | None = None
    held_since: float | None = None
    error: ServingError | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class StepStats:
    batch: int
    prefill: int
    prefill_s: float
    decode_s: float
    kv_occupancy: float
    streams: int
    chunks: int = 0
    drafted: int = 0  # prompt-lookup tokens drafted this step, and how many were accepted
    accepted: int = 0


class DecodeLoop:
    def __init__(self, name: str, runner: DecodeRunner, codec: GenerationCodec, limits: Limits, *,
                 prefill_tokens: int = 512, stall_timeout_s: float = 30.0, fair_shares: bool = True,
                 on_step: Any = None, on_streams: Any = None, on_cached: Any = None) -> None:
        self.name, self.runner, self.codec = name, runner, codec
        token_bytes = bytes_per_token(codec.spec.as_meta())
        # The prefix cache's share of the KV budget is the cache's alone: requests reserve from the rest.
        cached = int(limits.kv_cache_bytes * limits.prefix_cache_share) // token_bytes
        if cached and runner.cache is None:
            runner.cache = PrefixCache(cached, [codec.tokenize(p) for p in limits.shared_prefixes])
        budget = KvBudget(limits.kv_cache_bytes - cached * token_bytes if runner.cache else limits.kv_cache_bytes,
                          token_bytes)
        self.scheduler = DecodeScheduler(budget, max_running=limits.max_streams, prefill_tokens=prefill_tokens,
                                         max_waiting=limits.max_waiting, shares=FairShare(enabled=fair_shares))
        self.stall_timeout_s = stall_timeout_s
        self.on_step = on_step  # called with StepStats after every step (metrics)
        self.on_streams = on_streams  # called with the number of requests in the loop whenever it changes
        self.on_cached = on_cached  # called with the prompt tokens a request found in the prefix cache
        self.flights: dict[str, Flight] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{name}")
        self._closing = False
        # While a step or a burst runs on the version's thread the runner is that thread's alone: requests that
        # leave meanwhile are forgotten by the runner after it (`_released`), and `_replan` ends the burst.
        self._stepping = False
        self._replan = False
        self._released: list[str] = []
        self._pass_tokens = max(MIN_PASS_TOKENS, prefill_tokens // CHUNK_PASSES)
        self._grammars: Grammars | None = None  # structured output's compiler, made by the first request that asks

    # --- SlotQueue ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self.scheduler.running) or not self.scheduler.has_spare

    @property
    def queue_depth(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def requests_in_flight(self) -> int:
        return self.streams

    @property
    def streams(self) -> int:
        """Requests admitted or waiting: what `streams in flight` counts (0 once every client has gone)."""
        return len(self.flights)

    async def stop(self) -> None:
        self._closing = True
        self._replan = True
        if self._task is not None:  # first, so that no step runs while the requests are ended
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for rid, flight in list(self.flights.items()):
            self._end(rid, flight, Overloaded(f"{self.name} stopped"))
        self._executor.shutdown(wait=False)

    async def drain_and_stop(self, grace_s: float = 30.0) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self.flights and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.stop()

    # --- the request's side ------------------------------------------------------------
    async def start(self, prompt: list[int], params: SamplingParams, deadline: float,
                    shadow: bool = False, tenant: str = "", priority: int = PRIORITIES["normal"],
                    weight: float = 1.0) -> Flight:
        """Queue a request and wait for its first token: QueueFull (503) when too many wait, RateLimited (429)
        when `tenant` (of fair-share `weight`) already has its share of the queue waiting, DeadlineExceeded when
        it could not start before `deadline`, InvalidInput when it could never fit the KV budget."""
        if self._closing:
            raise Overloaded(f"{self.name} is being retired; retry")
        matcher = await self._matcher(params)
        rid = f"g{next(_ids)}"
        now = time.monotonic()
        hit = self.runner.lookup(prompt, tenant)
        cached = hit.tokens if hit else 0
        self.scheduler.add(Sequence(rid, len(prompt), params.max_tokens, now, deadline, length_bucket(len(prompt)),
                                    shadow, tenant, priority, weight=weight, cached=cached), now)
        self.runner.add(rid, prompt, params, tenant, hit, matcher)
        if self.on_cached is not None:
            self.on_cached(cached)
        stream = TokenStream(rid, self.codec.detokenize, prompt_tokens=len(prompt), max_tokens=params.max_tokens,
                             stop=params.stop, eos_id=None if params.ignore_eos else self.codec.spec.eos_id)
        flight = self.flights[rid] = Flight(rid, stream, asyncio.get_running_loop().create_future(), now)
        self._streams_changed()
        self._ensure_running()
        self._replan = True
        self._wake.set()
        try:
            await flight.first
        except BaseException:
            self.abort(rid)
            raise
        return flight

    async def _matcher(self, params: SamplingParams) -> Any:
        """The request's grammar, compiled off the event loop (the first one reads the tokenizer: about a second
        for a large vocabulary), or InvalidInput naming the field that carried it."""
        if params.output is None:
            return None
        if params.ignore_eos:
            raise InvalidInput("ignore_eos", "cannot be combined with a response format: the text ends where the "
                               "format does")
        if self._grammars is None:
            spec = self.codec.spec
            self._grammars = Grammars(self.codec.tokenizer_file.read_text(), spec.eos_id, spec.vocab)
        return await asyncio.get_running_loop().run_in_executor(None, self._grammars.matcher, params.output)

    def abort(self, request_id: str) -> None:
        """The client went, or a stop string ended the text: the request leaves at the next step."""
        flight = self.flights.get(request_id)
        if flight is None:
            return
        self.scheduler.abort(request_id)
        self._replan = True
        self._wake.set()

    async def log_probs(self, prompt: list[int], written: list[int]) -> np.ndarray:
        """This version's next-token log-probabilities at each of `written`'s positions, given the prompt and
        what precedes it there (one forward pass, on the loop's own thread between its steps): the canary
        comparison's teacher-forced scoring."""
        feed = self.codec.prefill_feed([prompt + written])

        def run() -> np.ndarray:
            logits = self.runner.session.run(["logits"], feed)[0][0]
            return log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + len(written)])

        self._replan = True  # it waits for the version's thread: a burst ends at its next step
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    # --- the loop ------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"decode-{self.name}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.scheduler.has_work:
                self.runner.compact()
                self._wake.clear()
                await self._wake.wait()
            now = time.monotonic()
            self._hold_slow_readers(now)
            plan = self.scheduler.plan(now)
            self._settle_removed(plan)
            if plan.idle:
                await asyncio.sleep(IDLE_POLL_S)
                continue
            self._stepping, self._replan = True, False
            try:
                last, result = await loop.run_in_executor(self._executor, self._steps, plan, loop)
            except Exception as exc:
                self._after_steps()
                self._fail_step(plan, exc)
                continue
            self._after_steps()
            for rid, tokens in result.left.items():
                self.scheduler.unplanned(rid, tokens)
            self._deliver(last, result)

    def _steps(self, plan: StepPlan, loop: asyncio.AbstractEventLoop) -> tuple[StepPlan, StepResult]:
        """On the version's thread: the plan's step; then, when it only decodes, the same decode again, each
        result handed to the event loop as it comes, until `_replan` (set on the loop) or MAX_BURST_S. A request
        that ended meanwhile may get one more token, which nobody reads: its rows go after the burst. Returns
        the last step and its result, for the loop to deliver."""
        result: StepResult = self.runner.step(plan, lambda: self._replan, self._pass_tokens,
                                              lambda first: loop.call_soon_threadsafe(self._hand_out, first))
        if not plan.decode or plan.prefill or plan.chunks or plan.preempted:
            return plan, result
        again, end = StepPlan(decode=plan.decode), time.monotonic() + MAX_BURST_S
        done = plan
        while not self._replan and time.monotonic() < end:
            loop.call_soon_threadsafe(self._deliver, done, result)
            done, result = again, self.runner.step(again)
        return done, result

    def _after_steps(self) -> None:
        """The version's thread is done: the runner forgets the requests that left while it stepped."""
        self._stepping = False
        released, self._released = self._released, []
        for rid in released:
            self.runner.release(rid)

    def _hold_slow_readers(self, now: float) -> None:
        for rid in list(self.scheduler.running):
            flight = self.flights.get(rid)
            if flight is None:
                continue
            full = flight.stream.full
            if full and flight.held_since is None:
                flight.held_since = now
            elif not full:
                flight.held_since = None
            if flight.held_since is not None and now - flight.held_since > self.stall_timeout_s:
                self.scheduler.abort(rid)
                flight.error = DeadlineExceeded(f"the client read nothing for {self.stall_timeout_s:g} s "
                                                "(SWITCHYARD_STALL_TIMEOUT_S)")
            self.scheduler.hold(rid, full)

    def _settle_removed(self, plan: StepPlan) -> None:
        for rid in plan.refused:
            flight = self.flights.get(rid)
            if flight is not None:
                self._end(rid, flight, Overloaded(
                    f"{self.name}: no room to start generating before the deadline (KV cache "
                    f"{self.scheduler.budget.occupancy:.0%} full, {len(self.scheduler.running)} streams; "
                    "limits.kv_cache_bytes, limits.max_streams)"))
        for rid in plan.removed:
            flight = self.flights.get(rid)
            if flight is not None:
                self._end(rid, flight, flight.error)

    def _deliver(self, plan: StepPlan, result: StepResult) -> None:
        if plan.decode:  # the time per token that Retry-After and deadline refusals are computed from
            self.scheduler.observe_step(result.decode_s + result.prefill_s)
        self._hand_out(result.tokens, result.more)
        if self.on_step is not None:
            self.on_step(StepStats(plan.batch, len(plan.prefill) + len(plan.chunks), result.prefill_s, result.decode_s,
                                   self.scheduler.budget.occupancy, len(self.flights),
                                   sum(1 for rid, n in plan.chunks if result.left.get(rid, 0) < n),
                                   result.drafted, result.accepted))

    def _hand_out(self, tokens: dict[str, int], more: dict[str, list[int]] | None = None) -> None:
        """Each request's new tokens to its stream: a first token resolves `start`; a stream that ended leaves."""
        now = time.monotonic()
        for rid, token in tokens.items():
            flight = self.flights.get(rid)
            if flight is None:
                continue
            alive = True
            for t in (token, *(more or {}).get(rid, ())):  # accepted draft tokens follow (speculation.py)
                alive = flight.stream.push(t)
                self.scheduler.advanced(rid)
                if not alive:
                    break
            if flight.first_token_at is None:
                flight.first_token_at = now
                if not flight.first.done():
                    flight.first.set_result(None)
            if not alive:
                self.scheduler.finish(rid)
                self._end(rid, flight, None)
            elif flight.stream.full:  # a slow reader: the next plan holds it
                self._replan = True

    def _streams_changed(self) -> None:
        if self.on_streams is not None:
            self.on_streams(len(self.flights))

    def _fail_step(self, plan: StepPlan, exc: Exception) -> None:
        log.warning("%s: a decode step of %d requests failed: %s", self.name, plan.batch, str(exc)[:500])
        error = ModelFailure(f"{self.name} failed while generating; the server log has the model's error")
        self.runner.running = None  # its KV state is unknown now: every request in it ends
        chunked = [*(rid for rid, _ in plan.chunks), *self.runner.partial]
        self.runner.partial = {}
        for rid in [*plan.prefill, *plan.decode, *self.runner.parked, *chunked]:
            self.scheduler.finish(rid)
            flight = self.flights.get(rid)
            if flight is not None:
                self._end(rid, flight, error)

    def _end(self, rid: str, flight: Flight, error: ServingError | None) -> None:
        """The request leaves: its stream ends (an error, or the reason it finished), its rows go."""
        self.flights.pop(rid, None)
        self._streams_changed()
        if self._stepping:  # the runner is the version's thread's until its burst ends
            self._released.append(rid)
            self._replan = True
        else:
            self.runner.release(rid)
        self.scheduler.finish(rid)
        if error is not None:
            flight.error = error
        if flight.stream.finish_reason is None:
            flight.stream.abort()
        if not flight.first.done():
            if error is not None:
                flight.first.set_exception(error)
            else:
                flight.first.set_result(None)
        flight.done.set()


def decode_loop(version: Any, settings: Any, limits: Limits, series: Any) -> DecodeLoop:
    """The decode loop of a loaded generative version, its steps counted on the version's metrics."""
    keep_freed_memory()

    def on_step(stats: StepStats) -> None:
        series.batch_size.observe(stats.batch)
        series.inference_duration.observe(stats.prefill_s + stats.decode_s)
        series.kv_occupancy.set(stats.kv_occupancy)
        if stats.chunks:
            series.prefill_chunks.inc(stats.chunks)
        if stats.drafted:
            series.speculative_accepted.inc(stats.accepted)
            series.speculative_rejected.inc(stats.drafted - stats.accepted)

    speculation = (Speculation(limits.speculate_tokens, limits.speculate_ngram, limits.speculate_min_acceptance,
                               pass_tokens=limits.speculate_pass_tokens) if limits.speculate_tokens else None)
    runner = DecodeRunner(version.session, version.codec, speculation=speculation)
    return DecodeLoop(version.tag, runner, version.codec, limits,
                      prefill_tokens=settings.prefill_tokens, stall_timeout_s=settings.stall_timeout_s,
                      fair_shares=settings.fair_shares,
                      on_step=on_step, on_streams=series.streams.set, on_cached=series.prefix_cached.inc)
