"""What a live version's slot holds its requests in: the protocol every execution mode implements.

One forward pass per batch is `AdaptiveBatcher` (batching.py); token-by-token generation plugs in a
decode loop beside it. The endpoint drains, stops and reports a slot through `SlotQueue` alone, and
asks for `ForwardQueue` only on the one-forward path.
"""

from __future__ import annotations

from typing import Any, Protocol

from bentos.dataplane.batching import Timing


class SlotQueue(Protocol):
    @property
    def busy(self) -> bool:
        """Work is in the model or waiting: no spare capacity for background copies."""
        ...

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model."""
        ...

    @property
    def requests_in_flight(self) -> int:
        """Requests waiting or in the model: what autoscaling reads (switchyard_requests_in_flight)."""
        ...

    async def stop(self) -> None:
        """Stop now; every request still held gets an answer (an error) instead of waiting for ever."""
        ...

    async def drain_and_stop(self, grace_s: float = 30.0) -> None:
        """Let what is queued and running finish, up to `grace_s`, then stop."""
        ...


class ForwardQueue(SlotQueue, Protocol):
    async def submit(self, rows: list[Any], deadline: float, bucket: int = 0) -> tuple[list[Any], Timing]:
        """One result per row, and the request's timing."""
        ...
