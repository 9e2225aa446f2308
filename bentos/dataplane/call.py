"""What a call carries down the serving path: plain values, made once per request.

`CallMeta` is what a protocol adapter knows before anything is checked (REST and OIP headers today,
gRPC metadata later); `Call` is what an admitted call carries to its endpoint (and, with its
version's `VersionSeries`, all the labels its metrics need). Keeping them typed here means a new
protocol, a client deadline or a new label is one field, not an argument added to every call on the way down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Source = Literal["api", "playground", "shadow", "guardrail"]
Protocol = Literal["rest", "oip", "playground", "grpc", "openai"]


@dataclass(frozen=True, slots=True)
class CallMeta:
    """One call as its protocol delivered it.

    `credentials` is any mapping with lower-case keys (HTTP headers and gRPC metadata both are);
    `deadline` is on the monotonic clock, None for the server's own (SWITCHYARD_REQUEST_TIMEOUT_S);
    `declared_bytes` is the body size the caller announced, None when it did not (chunked);
    `stored_pins`: the pin may name a stored version that is not live (loaded as a pin-only preview),
    as OIP's /versions/{version} and the playground allow; REST's X-Model-Version names live ones."""

    endpoint: str
    credentials: Mapping[str, str] = field(default_factory=dict)
    client: str | None = None
    pin: str | None = None
    routing_key: str | None = None
    source: Source = "api"
    protocol: Protocol = "rest"
    declared_bytes: int | None = None
    deadline: float | None = None
    stored_pins: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """An admitted call, as its endpoint sees it: `key` is the caller's key name ("" without one), a
    metrics label and never the secret; `pin` is already allowed by the gate."""

    routing_key: str | None = None
    pin: str | None = None
    source: Source = "api"
    protocol: Protocol = "rest"
    key: str = ""
    deadline: float | None = None
    may_prioritize: bool = False  # the key's 'priority' scope: generation's "high" is not capped
    weight: float = 1.0  # the key's fair-share weight in generation

    def deadline_or(self, timeout_s: float) -> float:
        """The call's deadline, or `timeout_s` from now when it has none (whichever is sooner otherwise)."""
        own = time.monotonic() + timeout_s
        return own if self.deadline is None else min(self.deadline, own)
