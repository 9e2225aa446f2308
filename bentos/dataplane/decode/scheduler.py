"""What each decode step does, decided as plain data: iteration-level (continuous) batching.

The scheduler holds the waiting queue and the running set of one generative version. Each turn, the
decode loop applies what happened (aborts, finished requests, slow readers), asks for a `StepPlan` and
runs it: newcomers are prefilled in the same step as the running requests decode, so a request that
arrives while others stream joins the next step instead of waiting for them to end.

The rules, each one line of `plan`:
- every running request decodes, except one whose reader is slow (its stream's buffer is full): it keeps
  its KV and is skipped until the reader catches up;
- newcomers are admitted oldest first, while the running set has room (`max_running`), the step's prefill
  budget has tokens left (`prefill_tokens`; the first newcomer of a step always fits, so no prompt
  starves) and the KV budget holds the newcomer's worst case (prompt plus max_tokens); prompts of one
  step share a length class, since a prefill batch pads to its longest;
- the head of the queue is never skipped for a smaller request behind it: no starvation;
- a request still waiting at its deadline is refused (503 with Retry-After), never run late;
- shadow copies are the lowest class: admitted only when no user request waits.

No asyncio, no ONNX Runtime, no clock of its own: time is passed in, so tests are exact.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bentos.dataplane.decode.kv_budget import KvBudget
from bentos.errors import InvalidInput, QueueFull


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
    generated: int = 0
    held: bool = False  # the reader is slow: skip, keep the KV

    @property
    def worst_case(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(frozen=True)
class StepPlan:
    prefill: tuple[str, ...] = ()  # run their prompts this step (each yields its first token)
    decode: tuple[str, ...] = ()  # advance one token each
    refused: tuple[str, ...] = ()  # waited past their deadline
    removed: tuple[str, ...] = ()  # aborted since the last plan; their KV is free again

    @property
    def idle(self) -> bool:
        return not (self.prefill or self.decode)

    @property
    def batch(self) -> int:
        return len(self.prefill) + len(self.decode)


@dataclass
class DecodeScheduler:
    budget: KvBudget
    max_running: int = 32
    prefill_tokens: int = 2048
    max_waiting: int = 256
    waiting: deque[Sequence] = field(default_factory=deque)
    running: dict[str, Sequence] = field(default_factory=dict)
    _aborted: set[str] = field(default_factory=set)

    def add(self, seq: Sequence) -> None:
        """Queue a request: 422 when it could never fit this version's KV budget, 503 when the queue is full."""
        if not self.budget.fits(seq.worst_case):
            raise InvalidInput("max_tokens", f"prompt ({seq.prompt_tokens} tokens) plus max_tokens "
                               f"({seq.max_tokens}) is over this version's KV budget of {self.budget.capacity} "
                               "tokens (limits.kv_cache_bytes)", {"max_total_tokens": self.budget.capacity})
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} generation requests already waiting (limits.max_waiting)")
        self.waiting.append(seq)

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
        decode = tuple(rid for rid, seq in self.running.items() if not seq.held)
        prefill = self._admit()
        return StepPlan(prefill, decode, refused, removed)

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
        late = [s.request_id for s in self.waiting if s.deadline <= now]
        if late:
            self.waiting = deque(s for s in self.waiting if s.deadline > now)
        return tuple(late)

    def _candidates(self) -> list[Sequence]:
        """Users oldest first; shadows only when no user waits."""
        users = [s for s in self.waiting if not s.shadow]
        return users or list(self.waiting)

    def _admit(self) -> tuple[str, ...]:
        admitted: list[Sequence] = []
        tokens = 0
        for seq in self._candidates():
            if len(self.running) >= self.max_running:
                break
            if admitted and (tokens + seq.prompt_tokens > self.prefill_tokens or seq.bucket != admitted[0].bucket):
                break
            if not self.budget.reserve(seq.request_id, seq.worst_case):
                break  # the head waits for room; nobody behind it jumps the queue
            admitted.append(seq)
            tokens += seq.prompt_tokens
            self.running[seq.request_id] = seq
        if admitted:
            chosen = {id(s) for s in admitted}
            self.waiting = deque(s for s in self.waiting if id(s) not in chosen)
        return tuple(s.request_id for s in admitted)
