"""Every error the service answers with, each of one `kind`; the protocols map kinds to answers in
`bentos.api.problems`, one table each.

Modules below the protocol adapters raise these and never build responses themselves. A kind says
what went wrong from the caller's side, not which module noticed: the REST, OIP, SSE, OpenAI and
gRPC tables all read it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args

Kind = Literal[
    "malformed",  # the body or a header cannot be read at all (bad JSON, multipart without a boundary)
    "invalid",  # well-formed, but a field breaks its type or limit: names the field and the limit
    "too_large",
    "request_timeout",  # the body did not arrive within its read deadline (limits.body_timeout_s)
    "unauthenticated",
    "forbidden",
    "not_found",
    "conflict",
    "rate_limited",
    "overloaded",  # queue, admission, KV budget, memory budget: retry later
    "deadline",  # the call's deadline passed before the model could take it
    "unavailable",  # no deployment yet, the control plane is away
    "model_failure",
]
KINDS: tuple[Kind, ...] = get_args(Kind)
# What a request's own content caused: never a version's failure, never rollout evidence, never a fallback.
CALLERS_FAULT: frozenset[Kind] = frozenset({"malformed", "invalid", "too_large"})


class ServingError(Exception):
    """An error with a kind and a message worded for the caller."""

    kind: ClassVar[Kind] = "malformed"

    def __init__(self, message: str, *, field: str | None = None, limit: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        self.headers = headers or {}


def retry_after(seconds: float) -> dict[str, str]:
    # Retry-After is whole seconds (RFC 9110); never 0, or clients would retry at once.
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class InvalidInput(ServingError):
    """A request item the model cannot take: names the field and, where there is one, the limit."""

    kind = "invalid"

    def __init__(self, field: str, message: str, limit: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {message}", field=field, limit=limit)


class InvalidFields(ServingError):
    """A body whose fields break their types or limits: every field error, the first in the message."""

    kind = "invalid"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        head = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"{head['field']}: {head['message']}{more}", field=head["field"], limit=head.get("limit"))
        self.errors = errors


class BodyTooLarge(ServingError):
    kind = "too_large"

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(f"body: request body exceeds {limit} bytes ({setting})", field="body",
                         limit={"max_bytes": limit})


class BodyTimeout(ServingError):
    """The body stopped arriving: 408, and the connection is closed (the rest of the body is never read)."""

    kind = "request_timeout"

    def __init__(self, timeout_s: float, setting: str) -> None:
        super().__init__(f"body: not received within {timeout_s:g} s ({setting})", field="body",
                         limit={"timeout_s": timeout_s}, headers={"Connection": "close"})


class AdminError(ServingError):
    """A refused admin change."""


class InvalidChange(AdminError):
    kind = "invalid"


class NotFound(AdminError):
    kind = "not_found"


class Conflict(AdminError):
    kind = "conflict"


class Unavailable(AdminError):
    kind = "unavailable"


class ConfigError(Exception):
    """switchyard.yaml is unreadable or invalid: start-up stops, naming the key."""


class Unauthorized(ServingError):
    """A missing, wrong or revoked credential."""

    kind = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="switchyard"'})


class Forbidden(ServingError):
    """A known caller without the role or scope the call needs: the message names it."""

    kind = "forbidden"


class RateLimited(ServingError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_after(retry_after_s))


class TooBusy(ServingError):
    """The worker's admission limits are full: a fast 503 instead of a growing queue."""

    kind = "overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=retry_after(1))


class Overloaded(ServingError):
    """The request could not get a model slot in time; the client should retry later."""

    kind: ClassVar[Kind] = "overloaded"
    retry_after_s = 1

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"overloaded, retry later: {detail}",
                         headers=retry_after(self.retry_after_s if retry_after_s is None else retry_after_s))


class MemoryFull(ServingError):
    """An on-demand version cannot load: the worker's model memory budget is held by versions in use."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_after(retry_after_s))


class QueueFull(Overloaded):
    pass


class DeadlineExceeded(Overloaded):
    kind = "deadline"


class NoDeployment(ServingError):
    """The endpoint has no live version yet."""

    kind = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=retry_after(5))


class ModelFailure(ServingError):
    """The model raised on valid input and no fallback could serve the request."""

    kind = "model_failure"

    def __init__(self, detail: str) -> None:
        super().__init__(f"model failure: {detail}")


class UnknownPin(ServingError):
    """A pin (X-Model-Version, an OIP version path) names no version of this endpoint."""

    kind = "not_found"
