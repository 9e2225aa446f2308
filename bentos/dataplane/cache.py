"""An LRU prediction cache with a time-to-live, keyed by version and input."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Any


def _plain(value: Any) -> Any:
    """Arrays and raw bytes (images, tensors) as JSON-able values for the key."""
    if isinstance(value, bytes):
        return hashlib.blake2b(value, digest_size=16).hexdigest()
    if hasattr(value, "tobytes"):
        return [str(value.dtype), list(value.shape), hashlib.blake2b(value.tobytes(), digest_size=16).hexdigest()]
    raise TypeError(f"cannot key {type(value).__name__}")


def input_key(version: str, payload: Any) -> str:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=_plain).encode()
    return f"{version}:{hashlib.blake2b(body, digest_size=16).hexdigest()}"


class PredictionCache:
    def __init__(self, size: int, ttl_s: float) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        stored, value = hit
        if time.monotonic() - stored > self.ttl_s:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        if self.size <= 0:
            return
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
