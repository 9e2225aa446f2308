"""One generative version's KV-cache budget, in tokens: who holds how much of it.

Each request reserves its worst case (prompt plus max_tokens) when it is admitted to the running set, so
that a running request never has to be preempted for memory, and frees it when it leaves. The budget is a
fixed number of bytes, reserved whole when the version becomes resident: a burst of streams can never push
the worker past it, or another model out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def bytes_per_token(meta: Mapping[str, Any]) -> int:
    """What one token of context costs in the cache: keys and values, for every layer and KV head. `meta` is
    the version's stored generation metadata: layers, kv_heads, head_dim, kv_dtype."""
    try:
        layers, heads, dim = int(meta["layers"]), int(meta["kv_heads"]), int(meta["head_dim"])
        size = DTYPE_BYTES[str(meta.get("kv_dtype", "float32"))]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"generation metadata needs layers, kv_heads, head_dim and a kv_dtype of "
                         f"{', '.join(DTYPE_BYTES)}: {exc}") from None
    if min(layers, heads, dim) < 1:
        raise ValueError(f"generation metadata: layers, kv_heads and head_dim must be positive, got {dict(meta)}")
    return 2 * layers * heads * dim * size


class KvBudget:
    def __init__(self, total_bytes: int, token_bytes: int) -> None:
        if token_bytes < 1 or total_bytes < token_bytes:
            raise ValueError(f"a KV budget of {total_bytes} bytes holds no token of {token_bytes} bytes")
        self.token_bytes = token_bytes
        self.capacity = total_bytes // token_bytes  # tokens
        self._held: dict[str, int] = {}
        self.used = 0

    def fits(self, tokens: int) -> bool:
        """Whether `tokens` could ever be held (with nothing else held)."""
        return 0 < tokens <= self.capacity

    def reserve(self, request_id: str, tokens: int) -> bool:
        """Hold `tokens` for `request_id`, or do nothing and say no. A request holds one reservation."""
        if request_id in self._held:
            raise ValueError(f"{request_id} already holds {self._held[request_id]} tokens")
        if tokens < 1 or self.used + tokens > self.capacity:
            return False
        self._held[request_id] = tokens
        self.used += tokens
        return True

    def free(self, request_id: str) -> int:
        """Give back what `request_id` holds (nothing if it holds nothing); the tokens freed."""
        tokens = self._held.pop(request_id, 0)
        self.used -= tokens
        return tokens

    def free_tokens_of(self, request_id: str) -> int:
        """What freeing `request_id` would give back."""
        return self._held.get(request_id, 0)

    def holds(self, request_id: str) -> bool:
        return request_id in self._held

    @property
    def occupancy(self) -> float:
        """The share of the budget held, 0 to 1."""
        return self.used / self.capacity
