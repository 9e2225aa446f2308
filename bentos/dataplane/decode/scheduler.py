"""What each decode step does, decided as plain data: iteration-level (continuous) batching.

The scheduler holds the waiting queue and the running set of one generative version. Each turn, the
decode loop applies what happened (aborts, finished requests, slow readers), asks for a `StepPlan` and
runs it: newcomers are prefilled in the same step as the running requests decode, so a request that
arrives while others stream joins the next step instead of waiting for them to end.

The rules, each one line of `plan`:
- every running request decodes, except one whose reader is slow (its stream's buffer is full): it keeps
  its KV and is skipped until the reader catches up;
- a step prefills at most `prefill_tokens` prompt tokens, so newcomers never stall the streams in flight
  for longer than that: a prompt longer than what the step has left is prefilled in chunks over the next
  steps (`StepPlan.chunks`), the running requests decoding beside each chunk; chunks in progress go before
  newcomers, except that the head of the queue, when its prompt fits half the budget whole and it can start
  now, gets a step without chunks (its first token then costs a short step, not a chunk's), unless the
  chunks waited the step before: then it is kept room for beside them. A short prompt never waits behind a
  long one's chunks, and the chunks still move at least every other step, by half the budget at least;
  the loop runs a step's chunks in passes and ends the step before or between two when a newcomer arrives,
  so that it waits for one pass at most, not a whole chunk: what the step did not run comes back (`unplanned`) and is
  planned again from where it stopped; a long prompt at the head of the queue that finds the step's
  budget taken by chunks in progress starts anyway, with no token run (its chunks follow theirs), so
  that the short prompts behind it get the room kept for a head;
  a prompt whose beginning the prefix cache holds (`Sequence.cached`) prefills only the rest, as a chunk;
- newcomers are admitted in order: higher priority class first, then the tenant served least so far
  (`FairShare`: virtual token counters, so backlogged tenants get equal weighted service), then oldest
  first; while the running set has room (`max_running`), the step's prefill budget has tokens left
  and the KV budget holds the newcomer's worst case (prompt plus max_tokens); whole prompts of one step
  share a length class, since a prefill batch pads to its longest;
- the head of that order is never skipped for a smaller request behind it: no starvation;
- a head that finds no room preempts running requests of a lower class (the lowest, latest admitted
  first): their KV is freed and they wait again at the front of their class, to be prefilled anew with
  what they already wrote (recomputed, never lost: their streams pause, they never fail); in its own
  class, it preempts the same way the streams a tenant holds beyond its share of `max_running`, when its
  own tenant holds fewer than its share (so a flood that took every stream cannot make a steady caller
  wait for the flood's requests to end);
- a request still waiting to start at its deadline is refused (503 with Retry-After), never run late;
  one whose deadline the work already running makes impossible is refused at once;
- a tenant with more waiting than its share of the queue gets 429, the server with a full queue 503:
  both with a Retry-After from the measured time per step and the tokens still to write ahead;
- shadow copies are the lowest class: admitted only when no user request waits.

No asyncio, no ONNX Runtime, no clock of its own: time is passed in, so tests are exact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bentos.dataplane.decode.kv_budget import KvBudget
from bentos.dataplane.decode.shares import FairShare
from bentos.errors import DeadlineExceeded, InvalidInput, QueueFull, RateLimited
from bentos.tasks.base import length_bucket

PRIORITIES = {"low": 0, "normal": 1, "high": 2}
SHADOW_CLASS = -1  # below every caller's class: preempted first, admitted last


@dataclass(eq=False)
class Sequence:
    """One generation request as the scheduler sees it."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    arrived: float
    deadline: float  # still waiting at this time: refused
    bucket: int = 0  # the prompt's length class
    shadow: bool = False
    tenant: str = ""
    priority: int = PRIORITIES["normal"]
    weight: float = 1.0  # its tenant's fair-share weight (the API key's)
    generated: int = 0
    held: bool = False  # the reader is slow: skip, keep the KV
    preempted: int = 0  # times its KV was taken for a higher class
    prefill_left: int = 0  # tokens of its prefill not yet planned (set at admission, cut by each chunk)
    cached: int = 0  # prompt tokens the prefix cache holds for it: its prefill starts after them

    @property
    def worst_case(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def prefill_tokens(self) -> int:
        """What its (next) prefill runs: the prompt past what the prefix cache holds, and after a preemption the
        whole prompt and what it had written too."""
        return self.prompt_tokens + self.generated - self.cached

    @property
    def prefilling(self) -> bool:
        """Admitted, with chunks of its prompt still to prefill: it does not decode yet."""
        return self.prefill_left > 0

    @property
    def rank(self) -> int:
        return SHADOW_CLASS if self.shadow else self.priority

    @property
    def started(self) -> bool:
        """Its first token is out: from here it may pause, never be refused."""
        return self.generated > 0


@dataclass(frozen=True)
class StepPlan:
    prefill: tuple[str, ...] = ()  # run their prompts this step (each yields its first token)
    decode: tuple[str, ...] = ()  # advance one token each
    refused: tuple[str, ...] = ()  # waited past their deadline
    removed: tuple[str, ...] = ()  # aborted since the last plan; their KV is free again
    preempted: tuple[str, ...] = ()  # their KV is freed for a higher class; they wait to be prefilled again
    # (request, tokens): the next piece of a prompt too long for one step, run on top of its KV so far;
    # the piece that ends the prompt yields the request's first token.
    chunks: tuple[tuple[str, int], ...] = ()

    @property
    def idle(self) -> bool:
        return not (self.prefill or self.decode or self.chunks)

    @property
    def batch(self) -> int:
        return len(self.prefill) + len(self.decode) + len(self.chunks)


@dataclass
class DecodeScheduler:
    budget: KvBudget
    max_running: int = 32
    prefill_tokens: int = 512
    max_waiting: int = 256
    shares: FairShare = field(default_factory=FairShare)
    step_s: float | None = None  # measured: a moving average of one decode step's seconds
    waiting: deque[Sequence] = field(default_factory=deque)
    running: dict[str, Sequence] = field(default_factory=dict)
    _aborted: set[str] = field(default_factory=set)
    _chunks_waited: bool = False  # the last step left the chunks in progress out, for a newcomer

    def add(self, seq: Sequence, now: float | None = None) -> None:
        """Queue a request, or refuse it at once: 422 when it could never fit this version's KV budget, 429 when
        its tenant already has its share of the queue waiting, 503 when the queue is full or when the work
        running ahead of it cannot leave room before its deadline."""
        if not self.budget.fits(seq.worst_case):
            raise InvalidInput("max_tokens", f"prompt ({seq.prompt_tokens} tokens) plus max_tokens "
                               f"({seq.max_tokens}) is over this version's KV budget of {self.budget.capacity} "
                               "tokens (limits.kv_cache_bytes, less limits.prefix_cache_share for the prefix "
                               "cache)", {"max_total_tokens": self.budget.capacity})
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} generation requests already waiting (limits.max_waiting)",
                            self.wait_estimate())
        if not seq.shadow:
            self.shares.weights[seq.tenant] = seq.weight  # the key's weight as of now (an admin may change it)
            active = self.tenants()
            self._check_share(seq, active)
            self._check_deadline(seq, seq.arrived if now is None else now)
            if seq.tenant not in active:
                self.shares.join(seq.tenant, active)
        self.waiting.append(seq)

    def tenants(self) -> set[str]:
        """Tenants with requests waiting or running (shadow copies are nobody's)."""
        return {s.tenant for s in (*self.waiting, *self.running.values()) if not s.shadow}

    def _check_share(self, seq: Sequence, active: set[str]) -> None:
        if len(active - {seq.tenant}) == 0 or not self.shares.enabled:
            return  # alone (the whole queue is its share), or shares are off
        mine = sum(1 for s in self.waiting if s.tenant == seq.tenant and not s.shadow)
        allowed = max(1, int(self.max_waiting * self.shares.share(seq.tenant, active)))
        if mine >= allowed:
            raise RateLimited(f"{mine} of this caller's generation requests already wait, its share of the "
                              f"queue (limits.max_waiting {self.max_waiting}, shared by {len(active)} callers); "
                              "retry after the time given", self.wait_estimate())

    def _check_deadline(self, seq: Sequence, now: float) -> None:
        """Refuse now what cannot start in time: while the running set is full, nothing starts before the
        running request nearest its end has written its remaining tokens (a lower bound on the wait)."""
        if self.step_s is None or len(self.running) < self.max_running or seq.deadline == float("inf"):
            return
        if any(r.rank < seq.rank for r in self.running.values()) or self._over_share(seq):
            return  # it could preempt its way in
        soonest = min(r.max_tokens - r.generated for r in self.running.values())
        if now + soonest * self.step_s > seq.deadline:
            raise DeadlineExceeded(f"it could not start before its deadline: every one of {self.max_running} "
                                   f"streams (limits.max_streams) has at least {soonest} tokens to write, about "
                                   f"{soonest * self.step_s:.1f} s", soonest * self.step_s)

    def observe_step(self, seconds: float) -> None:
        """A decode step's measured time (the loop reports each one): what Retry-After and deadlines use."""
        self.step_s = seconds if self.step_s is None else 0.9 * self.step_s + 0.1 * seconds

    def wait_estimate(self) -> float:
        """Seconds until the queue ahead has started: the tokens the running and waiting requests still have
        to write, one step per token, spread over the streams that write at once."""
        if self.step_s is None:
            return 1.0
        ahead = sum(s.max_tokens - s.generated for s in (*self.running.values(), *self.waiting))
        return ahead * self.step_s / max(1, self.max_running)

    def abort(self, request_id: str) -> None:
        """The client went, or its stream stopped (a stop string): removed at the next plan."""
        self._aborted.add(request_id)

    def finish(self, request_id: str) -> None:
        """It produced its last token (max_tokens, end of text): it leaves, and its KV is free, at once."""
        if self.running.pop(request_id, None) is not None:
            self.budget.free(request_id)

    def advanced(self, request_id: str) -> None:
        """One more token out for a running request (the loop calls this after a step)."""
        seq = self.running.get(request_id)
        if seq is not None:
            seq.generated += 1
            if not seq.shadow:
                self.shares.charge(seq.tenant, generated=1)

    def unplanned(self, request_id: str, tokens: int) -> None:
        """`tokens` of a chunk the step did not run (a newcomer interrupted it): planned again from the next step."""
        seq = self.running.get(request_id)
        if seq is not None:
            seq.prefill_left += tokens

    def hold(self, request_id: str, held: bool) -> None:
        seq = self.running.get(request_id)
        if seq is not None:
            seq.held = held

    @property
    def has_work(self) -> bool:
        """Something to plan: requests running or waiting, or aborts to apply."""
        return bool(self.running or self.waiting or self._aborted)

    @property
    def has_spare(self) -> bool:
        """Nobody waits: background work (shadow copies) may run."""
        return not any(not s.shadow for s in self.waiting)

    def plan(self, now: float) -> StepPlan:
        removed = self._remove_aborted()
        refused = self._refuse_late(now)
        preempted = self._preempt()
        decode = tuple(rid for rid, seq in self.running.items() if not seq.held and not seq.prefilling)
        candidates = self._candidates()  # sorted once a step: the room kept for the head, then admission
        kept = self._room_for_head(candidates)
        wait = bool(kept) and not self._chunks_waited and any(s.prefilling for s in self.running.values())
        chunks = () if wait else self._continue_chunks(self.prefill_tokens - kept)
        self._chunks_waited = wait
        prefill, started = self._admit(candidates, self.prefill_tokens - sum(n for _, n in chunks))
        return StepPlan(prefill, decode, refused, removed, preempted, chunks + started)

    def _remove_aborted(self) -> tuple[str, ...]:
        gone, self._aborted = self._aborted, set()
        removed = []
        for rid in gone:
            if self.running.pop(rid, None) is not None:
                self.budget.free(rid)
                removed.append(rid)
        kept = [s for s in self.waiting if s.request_id not in gone]
        removed += [s.request_id for s in self.waiting if s.request_id in gone]
        self.waiting = deque(kept)
        return tuple(sorted(removed))

    def _refuse_late(self, now: float) -> tuple[str, ...]:
        late = [s.request_id for s in self.waiting if s.deadline <= now and not s.started]
        if late:
            self.waiting = deque(s for s in self.waiting if s.request_id not in late)
        return tuple(late)

    def _candidates(self) -> list[Sequence]:
        """Users by class, then least-served tenant, then fewest streams held, then oldest; shadows only when no
        user waits."""
        users = [s for s in self.waiting if not s.shadow]
        # Between tenants served alike (one that just came back starts level), the one running fewer streams.
        holding: dict[str, int] = {}
        for seq in self.running.values():
            holding[seq.tenant] = holding.get(seq.tenant, 0) + 1
        return sorted(users, key=lambda s: (-s.rank, self.shares.served(s.tenant), holding.get(s.tenant, 0),
                                            s.arrived)) or list(self.waiting)

    def _preempt(self) -> tuple[str, ...]:
        """Room for the head of the order, taken from lower classes when it has none (vLLM's recompute
        preemption): the victims' KV is freed and they wait to be prefilled again."""
        candidates = self._candidates()
        if not candidates:
            return ()
        head = candidates[0]
        victims: list[Sequence] = []
        # Lowest class first, and within it the latest admitted (the running dict keeps admission order); then,
        # in the head's own class, streams of tenants holding more than their share while the head's holds less.
        lower = sorted((s for s in reversed(self.running.values()) if s.rank < head.rank), key=lambda s: s.rank)
        lower += self._over_share(head)
        while lower and not self._room_for(head, freed=victims):
            victims.append(lower.pop(0))
        if not self._room_for(head, freed=victims):
            return ()  # even all of them would not make room: take nothing
        for seq in victims:
            del self.running[seq.request_id]
            self.budget.free(seq.request_id)
            seq.preempted += 1
            seq.held = False
            seq.prefill_left = 0  # its KV is gone, chunks included: prefilled again from the start on admission
            seq.cached = 0  # and what it had from the prefix cache with it
            seq.bucket = length_bucket(seq.prefill_tokens)  # what it will prefill now
            self.waiting.appendleft(seq)
        return tuple(s.request_id for s in victims)

    def stream_share(self, tenant: str, active: set[str]) -> int:
        """The running streams `tenant` is owed while `active` tenants have work: its weight's part, at least 1."""
        return max(1, int(self.max_running * self.shares.share(tenant, active)))

    def _over_share(self, head: Sequence) -> list[Sequence]:
        """Running requests of the head's class that the head may take the place of, latest admitted first: the
        excess of tenants holding more streams than their share, while the head's tenant holds fewer than its
        own. A flood that filled every stream gives a newcomer its share at once, instead of after its turns."""
        if head.shadow or not self.shares.enabled:
            return []
        active = self.tenants()
        running = [s for s in self.running.values() if not s.shadow]
        if sum(1 for s in running if s.tenant == head.tenant) >= self.stream_share(head.tenant, active):
            return []
        out: list[Sequence] = []
        for tenant in {s.tenant for s in running} - {head.tenant}:
            mine = [s for s in reversed(running) if s.tenant == tenant]
            excess = len(mine) - self.stream_share(tenant, active)
            out += [s for s in mine if s.rank == head.rank][:max(0, excess)]
        return out

    def _room_for(self, seq: Sequence, freed: list[Sequence]) -> bool:
        held = sum(self.budget.free_tokens_of(s.request_id) for s in freed)
        return (len(self.running) - len(freed) < self.max_running
                and self.budget.used - held + seq.worst_case <= self.budget.capacity)

    def _room_for_head(self, candidates: list[Sequence]) -> int:
        """Prefill tokens kept from the chunks in progress for the next newcomer: its prompt, when it can start
        now (a stream and its worst case of KV free) and fits half the step's budget whole."""
        if candidates and candidates[0].prefill_tokens <= self.prefill_tokens // 2 and \
                self._room_for(candidates[0], freed=[]):
            return candidates[0].prefill_tokens
        return 0

    def _continue_chunks(self, budget: int) -> tuple[tuple[str, int], ...]:
        """The next piece of each prompt being prefilled in chunks, in admission order, within `budget`."""
        left, chunks = budget, []
        for seq in self.running.values():
            if seq.prefilling and left > 0:
                n = min(left, seq.prefill_left)
                seq.prefill_left -= n
                left -= n
                chunks.append((seq.request_id, n))
        return tuple(chunks)

    def _admit(self, candidates: list[Sequence], budget: int) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
        """Newcomers within the budget: prompts prefilled whole in one batch (one length class), and prompts on
        top of a cached prefix, each its own chunk; or, when the first one's prompt is longer than what the step
        has left, that one alone, started in chunks."""
        batch: list[Sequence] = []
        cached: list[Sequence] = []
        tokens = 0
        for seq in candidates:
            if len(self.running) >= self.max_running:
                break
            # With no tokens left, a long head still starts (its chunks come in the next steps), so that the short
            # prompts behind it get the room kept for a head next step instead of waiting for its first chunk.
            if tokens >= budget and (batch or cached or seq.prefill_tokens <= self.prefill_tokens // 2):
                break
            whole = tokens + seq.prefill_tokens <= budget
            if (batch or cached) and (not whole or (not seq.cached and batch and seq.bucket != batch[0].bucket)):
                break
            if not self.budget.reserve(seq.request_id, seq.worst_case):
                break  # the head waits for room; nobody behind it jumps the queue
            self.running[seq.request_id] = seq
            if not seq.shadow and not seq.preempted:
                self.shares.charge(seq.tenant, prompt=seq.prompt_tokens)
            if not whole:
                seq.prefill_left = seq.prefill_tokens - budget
                self._leave_queue([seq])
                return (), ((seq.request_id, budget),) if budget else ()
            tokens += seq.prefill_tokens
            (cached if seq.cached else batch).append(seq)
        self._leave_queue(batch + cached)
        return tuple(s.request_id for s in batch), tuple((s.request_id, s.prefill_tokens) for s in cached)

    def _leave_queue(self, admitted: list[Sequence]) -> None:
        if admitted:
            chosen = {id(s) for s in admitted}
            self.waiting = deque(s for s in self.waiting if id(s) not in chosen)
