"""One generation request through an endpoint: its version picked once, its tokens read, its books kept once.

`Endpoint.generate` returns a `Generation` once the first token exists (every refusal before that is an
ordinary error); the protocol adapter reads `pieces()` and calls `close()` on every exit. Closing a
stream that has not finished is the client going away: the request is aborted (its KV freed at the next
step) and nothing is recorded against the version.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from bentos.dataplane.call import Call
from bentos.dataplane.decode.loop import DecodeLoop, Flight
from bentos.dataplane.decode.streams import Usage
from bentos.dataplane.guardrails import OutputWindow
from bentos.tasks.text_generation import SamplingParams

if TYPE_CHECKING:
    from bentos.dataplane.endpoint import Endpoint, Pick

Outcome = Literal["ok", "error", "aborted"]


@dataclass
class Generation:
    endpoint: Endpoint
    pick: Pick
    call: Call
    loop: DecodeLoop
    flight: Flight
    prompt: list[int]
    params: SamplingParams
    on_close: list[Callable[[Generation], None]] = field(default_factory=list)
    outcome: Outcome | None = None
    ended_at: float | None = None
    # The span current when it started (the request's), when tracing records: the stream ends after the
    # handler that started it, where that span is no longer current.
    trace_parent: Any = None
    window: OutputWindow | None = None  # the endpoint's output guardrails: text is released a checked chunk at a time

    @property
    def version(self) -> str:
        return self.pick.tag

    @property
    def route(self) -> str:
        return self.pick.route

    @property
    def text(self) -> str:
        return self.flight.stream.text if self.window is None else self.window.released

    @property
    def usage(self) -> Usage:
        return self.flight.stream.usage

    @property
    def finish_reason(self) -> str | None:
        if self.window is not None and self.window.cut is not None:
            return "content_filter"
        return self.flight.stream.finish_reason

    @property
    def first_token_s(self) -> float:
        return (self.flight.first_token_at or time.monotonic()) - self.pick.start

    @property
    def total_s(self) -> float:
        return (self.ended_at or time.monotonic()) - self.pick.start

    async def pieces(self) -> AsyncIterator[str]:
        """The text as it is written; the error that ended it, if one did, is raised after the last piece."""
        stream, window = self.flight.stream, self.window
        while (piece := await stream.next_piece()) is not None:
            if window is None:
                yield piece
                continue
            for chunk in await window.push(piece):
                yield chunk
            if window.cut is not None:
                self.loop.abort(self.flight.request_id)  # the rest would never be sent: stop writing it
                return
        if self.flight.error is not None:
            raise self.flight.error
        if window is not None:
            for chunk in await window.flush():
                yield chunk

    async def collect(self) -> str:
        async for _ in self.pieces():
            pass
        return self.text

    def close(self) -> None:
        """The request's end, whatever it was (idempotent): abort it if it is still running, keep its books."""
        if self.outcome is not None:
            return
        self.ended_at = time.monotonic()
        flight = self.flight
        if flight.error is not None:
            self.outcome = "error"
        elif self.window is not None and self.window.cut is not None:
            self.outcome = "ok"  # served: the policy ended it, not the client or the model
            self.loop.abort(flight.request_id)
        elif flight.stream.finish_reason in (None, "abort"):
            self.outcome = "aborted"
            self.loop.abort(flight.request_id)
        else:
            self.outcome = "ok"
        self.endpoint.settle_generation(self)
        for callback in self.on_close:
            callback(self)
