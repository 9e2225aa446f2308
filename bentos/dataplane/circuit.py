"""A circuit breaker per model version: stop sending traffic to a version that keeps failing."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(Enum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class CircuitPolicy:
    failures: int = 5  # consecutive failures that open it
    error_rate: float = 0.5  # or this error rate in the window...
    window_s: float = 30.0
    min_requests: int = 20  # ...once the window holds this many requests
    cooldown_s: float = 5.0  # open this long, then let one probe through


class CircuitBreaker:
    def __init__(self, policy: CircuitPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._now = clock
        self.state = State.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._window: deque[tuple[float, bool]] = deque()

    def allow(self) -> bool:
        """May a request go to this version now? In half-open, exactly one probe may."""
        if self.state is State.OPEN:
            if self._now() - self._opened_at < self.policy.cooldown_s:
                return False
            self.state, self._probing = State.HALF_OPEN, False
        if self.state is State.HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def release(self) -> None:
        """Settle a half-open probe that ended without a verdict on the model (a cache hit, an overload,
        a refused input): the breaker stays half-open and the next request probes."""
        if self.state is State.HALF_OPEN:
            self._probing = False

    def record(self, ok: bool) -> None:
        now = self._now()
        self._window.append((now, ok))
        while self._window and now - self._window[0][0] > self.policy.window_s:
            self._window.popleft()
        if ok:
            self._consecutive = 0
            if self.state is State.HALF_OPEN:
                self.state, self._probing = State.CLOSED, False
                self._window.clear()
            return
        self._consecutive += 1
        if self.state is State.HALF_OPEN or self._should_open():
            self.state, self._opened_at, self._probing = State.OPEN, now, False

    def _should_open(self) -> bool:
        if self._consecutive >= self.policy.failures:
            return True
        if len(self._window) < self.policy.min_requests:
            return False
        errors = sum(1 for _, ok in self._window if not ok)
        return errors / len(self._window) > self.policy.error_rate
