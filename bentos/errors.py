"""Every error the service answers with, and its HTTP status; `bentos.api.app.problem` maps them.

Modules below the HTTP surface raise these and never build responses themselves.
"""

from __future__ import annotations

import math
from typing import Any


class ServingError(Exception):
    """An error with an HTTP status and a message worded for the caller."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None, limit: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        self.headers = headers or {}


class InvalidInput(ServingError):
    """A request item the model cannot take: names the field and, where there is one, the limit."""

    status = 422

    def __init__(self, field: str, message: str, limit: dict[str, Any] | None = None) -> None:
        super().__init__(f"{field}: {message}", field=field, limit=limit)


class BodyTooLarge(ServingError):
    status = 413

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(f"body: request body exceeds {limit} bytes ({setting})", field="body",
                         limit={"max_bytes": limit})


class AdminError(ServingError):
    """A refused admin change."""


class InvalidChange(AdminError):
    status = 422


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class Unavailable(AdminError):
    status = 503


class ConfigError(Exception):
    """switchyard.yaml is unreadable or invalid: start-up stops, naming the key."""


class Unauthorized(ServingError):
    """A missing, wrong or revoked credential."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="switchyard"'})


class Forbidden(ServingError):
    """A known caller without the role or scope the call needs: the message names it."""

    status = 403


class RateLimited(ServingError):
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        # Retry-After is whole seconds (RFC 9110); never 0, or clients would retry at once.
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class TooBusy(ServingError):
    """The worker's admission limits are full: a fast 503 instead of a growing queue."""

    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})
