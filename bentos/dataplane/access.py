"""Who may call inference, how often, and how much may be in flight: API keys, token buckets, admission.

Keys live in the control plane as SHA-256 digests; every worker holds the live ones (synced with the
deployments) and a token bucket per key. Buckets are per worker process, each with a share of a key's
rate: 1 / SWITCHYARD_WORKERS on one host, and with PostgreSQL 1 / the workers of every replica alive by
their heartbeats (Engine._fleet_loop), so a fleet enforces the rate a key was given when its load spreads
over workers and replicas. During a database outage each worker keeps its last share: it fails open at
that rate, never closed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from bentos.errors import Forbidden, RateLimited, TooBusy, Unauthorized
from bentos.settings import ServeSettings

KEY_PREFIX = "sy_"
PIN_SCOPE = "pin"
PRIORITY_SCOPE = "priority"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """Keys are 256 random bits, so a plain SHA-256 is enough to store them (no password stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenBucket:
    """`rate` tokens per second up to `burst`; a request takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is due."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else 3600.0


@dataclass(frozen=True)
class LiveKey:
    name: str
    rate: float
    burst: float
    scopes: frozenset[str]
    weight: float = 1.0


@dataclass(frozen=True)
class Caller:
    """What the HTTP layer needs to know about an admitted request."""

    key: str  # the key's name, "" without one: a metrics label, never the secret
    may_pin: bool
    may_prioritize: bool = False  # may ask generation for priority "high"
    weight: float = 1.0  # generation: the key's fair-share weight


class AccessGate:
    """Keys, per-key and per-IP buckets for one worker."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._keys: dict[str, LiveKey] = {}  # digest -> key
        self._buckets: dict[str, TokenBucket] = {}  # key name -> bucket
        self._ips: OrderedDict[str, TokenBucket] = OrderedDict()
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        self._share = 1.0 / settings.workers

    def set_keys(self, keys: list[tuple[str, LiveKey]]) -> None:
        """The live keys as (digest, key); a key whose rate and burst did not change keeps its bucket."""
        self._keys = dict(keys)
        live = {k.name: k for k in self._keys.values()}
        self._buckets = {name: b for name, b in self._buckets.items()
                         if name in live and (b.rate, b.burst) == self._limits(live[name])}

    def _limits(self, key: LiveKey) -> tuple[float, float]:
        return key.rate * self._share, max(1.0, key.burst * self._share)

    def _ip_limits(self) -> tuple[float, float]:
        return self.settings.ip_rate * self._share, max(1.0, self.settings.ip_burst * self._share)

    @property
    def share(self) -> float:
        return self._share

    def share_among(self, workers: int) -> None:
        """Rates divided among `workers` live workers of the fleet; buckets keep their tokens (at most the
        new burst), so a change of share neither refills nor empties them."""
        share = 1.0 / max(1, workers)
        if share == self._share:
            return
        self._share = share
        live = {k.name: k for k in self._keys.values()}
        for name, bucket in self._buckets.items():
            if name in live:
                bucket.rate, bucket.burst = self._limits(live[name])
                bucket.tokens = min(bucket.tokens, bucket.burst)
        for bucket in self._ips.values():
            bucket.rate, bucket.burst = self._ip_limits()
            bucket.tokens = min(bucket.tokens, bucket.burst)

    def admit(self, headers: Mapping[str, str], client_host: str | None) -> Caller:
        """Raise 401 (no or revoked key), 429 (over the rate); else who the caller is."""
        get = headers.get
        secret = _presented(get("x-api-key"), get("authorization"))
        now = time.monotonic()
        if secret:
            key = self._keys.get(digest(secret))
            if key is None:
                raise Unauthorized("API key not recognised or revoked (X-API-Key)")
            self._limit(self._bucket(key, now), now, f"API key {key.name}: over its rate of {key.rate:g}/s")
            return Caller(key.name, PIN_SCOPE in key.scopes, PRIORITY_SCOPE in key.scopes, key.weight)
        if self.settings.require_api_key:
            raise Unauthorized("an API key is required: send X-API-Key (SWITCHYARD_REQUIRE_API_KEY is on)")
        if self.settings.ip_rate > 0:
            ip = self.client_ip(client_host, get("x-forwarded-for"))
            self._limit(self._ip_bucket(ip, now), now,
                        f"client {ip}: over the per-IP rate of {self.settings.ip_rate:g}/s (SWITCHYARD_IP_RATE)")
        return Caller("", self.settings.allow_pinning)

    def pin_for(self, caller: Caller, pin: str | None) -> str | None:
        """Without keys in play, SWITCHYARD_ALLOW_PINNING decides as before (the endpoint ignores a pin when
        it is off); a caller with a key may pin only with the 'pin' scope."""
        if pin and (caller.key or self.settings.require_api_key) and not caller.may_pin:
            raise Forbidden("X-Model-Version: pinning a version needs an API key with the 'pin' scope")
        return pin or None

    @staticmethod
    def _limit(bucket: TokenBucket, now: float, message: str) -> None:
        wait = bucket.take(now)
        if wait > 0:
            raise RateLimited(message, wait)

    def _bucket(self, key: LiveKey, now: float) -> TokenBucket:
        bucket = self._buckets.get(key.name)
        if bucket is None:
            bucket = self._buckets[key.name] = TokenBucket(*self._limits(key), now)
        return bucket

    def _ip_bucket(self, ip: str, now: float) -> TokenBucket:
        """A bounded LRU: a flood of addresses evicts the oldest, memory never grows past ip_table_size."""
        bucket = self._ips.get(ip)
        if bucket is None:
            bucket = self._ips[ip] = TokenBucket(*self._ip_limits(), now)
            if len(self._ips) > self.settings.ip_table_size:
                self._ips.popitem(last=False)
        else:
            self._ips.move_to_end(ip)
        return bucket

    def client_ip(self, peer: str | None, forwarded: str | None) -> str:
        """The peer, or, when the peer is a trusted proxy, the nearest X-Forwarded-For hop that is not one."""
        ip = peer or "unknown"
        if not forwarded or not self._trusted(ip):
            return ip
        for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
            ip = hop
            if not self._trusted(hop):
                break
        return ip

    def _trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._proxies)


def _presented(api_key: str | None, authorization: str | None) -> str | None:
    if api_key:
        return api_key.strip()
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip().startswith(KEY_PREFIX):
        return value.strip()
    return None


class Admission:
    """A cap on requests and request bytes in flight in this worker: past it, a fast 503, so a flood
    costs a refused connection's worth of memory instead of a queued body's."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.requests = self.bytes = 0

    def take(self, nbytes: int) -> None:
        """Reserve one request and `nbytes`, or raise TooBusy; `give` returns them."""
        if self.requests >= self.max_requests:
            raise TooBusy(f"{self.requests} requests in flight in this worker (SWITCHYARD_MAX_CONCURRENCY)")
        if self.bytes + nbytes > self.max_bytes and self.requests:
            raise TooBusy(f"{self.bytes} request bytes in flight in this worker (SWITCHYARD_MAX_INFLIGHT_BYTES)")
        self.requests += 1
        self.bytes += nbytes

    def grow(self, nbytes: int) -> None:
        """Reserve `nbytes` more for a request already admitted (its body, as it arrives), or raise TooBusy;
        one request alone may still go past the cap (the body limit bounds it)."""
        if self.bytes + nbytes > self.max_bytes and self.requests > 1:
            raise TooBusy(f"{self.bytes} request bytes in flight in this worker (SWITCHYARD_MAX_INFLIGHT_BYTES)")
        self.bytes += nbytes

    def give(self, nbytes: int) -> None:
        self.requests -= 1
        self.bytes -= nbytes

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        self.take(nbytes)
        try:
            yield
        finally:
            self.give(nbytes)
