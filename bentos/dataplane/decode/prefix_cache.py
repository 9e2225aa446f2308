"""Prompt prefixes' KV cache for one generative version: reused across requests, never across tenants.

A prompt is cut into blocks of `BLOCK` tokens. Each block has a key that hashes the key of the block before
it, the block's tokens and a salt, so a key names a whole prefix. The salt is the tenant's (the API key's
name, which the server derived from the secret; nothing the client sends can choose it), mixed with a secret
drawn when the cache is made: a request can only hit what its own tenant put there. That is the lesson of the
prefix-cache timing leak (CVE-2025-46570): a hit is faster, so a shared cache tells one tenant what another
sent. Blocks inside a prefix the operator marks shared (`shared_prefixes`, a system prompt say) take a salt of
their own instead, so every tenant reuses them; the blocks after it are the tenant's again.

An entry is the KV of one prompt's block-aligned prefix, [1, kv heads, tokens, head dim] per past input;
every block key along it points into it, so a later prompt that shares only its first blocks hits too.
Entries are evicted least recently used first when a new one would pass `capacity` tokens (a share of the
version's KV budget). A hit hands out views: an entry evicted while a request still reads it stays alive
until that request is done with it, so eviction never changes a request's tokens.

The cache is written from the decode thread and read from the event loop: one lock.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK = 16  # tokens per block: the granularity of a hit
SHARED_SALT = b"shared"


@dataclass(frozen=True)
class Hit:
    tokens: int  # prompt tokens whose keys and values the cache holds (a multiple of BLOCK)
    past: list[np.ndarray]  # [1, kv heads, tokens, head dim] per past input (views)


class PrefixCache:
    def __init__(self, capacity_tokens: int, shared: Sequence[Sequence[int]] = ()) -> None:
        self.capacity = capacity_tokens
        self.shared = [list(s) for s in shared if len(s) >= BLOCK]
        self.held = 0  # tokens held by entries
        self._secret = secrets.token_bytes(16)
        self._entries: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # least recently used first
        self._keys_of: dict[int, list[bytes]] = {}
        self._index: dict[bytes, tuple[int, int]] = {}  # block key -> (entry, tokens up to that block)
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def keys(self, tokens: Sequence[int], tenant: str) -> list[bytes]:
        """The key of each whole block of `tokens`, in order."""
        shared = self._shared_length(tokens)
        own = hmac.new(self._secret, b"tenant:" + tenant.encode(), hashlib.sha256).digest()
        common = hmac.new(self._secret, SHARED_SALT, hashlib.sha256).digest()
        keys, key = [], b""
        ids = np.asarray(tokens, np.int64)
        for end in range(BLOCK, len(tokens) + 1, BLOCK):
            salt = common if end <= shared else own
            key = hashlib.blake2b(key + salt + ids[end - BLOCK:end].tobytes(), digest_size=16).digest()
            keys.append(key)
        return keys

    def _shared_length(self, tokens: Sequence[int]) -> int:
        """Tokens of the longest operator-marked shared prefix `tokens` starts with (0 if none)."""
        best = 0
        for prefix in self.shared:
            if len(prefix) > best and list(tokens[:len(prefix)]) == prefix:
                best = len(prefix)
        return best

    def lookup(self, tokens: Sequence[int], tenant: str) -> Hit | None:
        """The longest cached prefix of `tokens` for `tenant`, leaving at least one token to compute (its logits
        are the first token's)."""
        usable = (len(tokens) - 1) // BLOCK
        keys = self.keys(tokens[:usable * BLOCK], tenant)
        with self._lock:
            for key in reversed(keys):
                found = self._index.get(key)
                if found is not None:
                    entry, length = found
                    self._entries.move_to_end(entry)
                    return Hit(length, [p[:, :, :length] for p in self._entries[entry]])
        return None

    def insert(self, tokens: Sequence[int], tenant: str, past: list[np.ndarray]) -> None:
        """Keep the keys and values of `tokens`' whole blocks (`past`: one row, at least that long)."""
        length = len(tokens) // BLOCK * BLOCK
        if length == 0 or length > self.capacity:
            return
        keys = self.keys(tokens[:length], tenant)
        with self._lock:
            found = self._index.get(keys[-1])
            if found is not None and found[1] == length:
                self._entries.move_to_end(found[0])
                return
        kept = [np.ascontiguousarray(p[:, :, :length]) for p in past]  # a copy: not the batch's arrays
        with self._lock:
            while self._entries and self.held + length > self.capacity:
                self._evict(next(iter(self._entries)))
            entry = next(self._ids)
            self._entries[entry] = kept
            self._keys_of[entry] = keys
            self.held += length
            for i, key in enumerate(keys):
                self._index[key] = (entry, (i + 1) * BLOCK)

    def _evict(self, entry: int) -> None:
        past = self._entries.pop(entry)
        self.held -= past[0].shape[2]
        for key in self._keys_of.pop(entry):
            if self._index.get(key, (None,))[0] == entry:
                del self._index[key]

    def __len__(self) -> int:
        return len(self._entries)
