"""Choosing a version for a request: weighted split, sticky keys, pinning, shadows.

Sticky routing hashes the routing key to a point in [0, 100) and gives canaries the
lowest slices of that line. Raising a canary from 10 % to 20 % widens its slice from
[0, 10) to [0, 20): keys only move into the canary, never back out.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from bentos.errors import UnknownPin
from bentos.schemas import DeploymentSpec, VersionSpec

__all__ = ["Choice", "Router", "UnknownPin", "key_point"]


@dataclass(frozen=True)
class Choice:
    tag: str
    route: str  # stable | canary | pinned
    sticky: bool = False


def key_point(key: str) -> float:
    """A stable point in [0, 100) for a routing key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


class Router:
    def __init__(self, spec: DeploymentSpec, variants: dict[str, str] | None = None,
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self._rng = rng or random.Random()
        # Canaries first on the line, so their slices only grow from 0 as weights rise.
        self._slices: list[tuple[float, VersionSpec]] = []
        edge = 0.0
        for version in [*spec.by_role("canary"), spec.stable]:
            edge += version.weight
            self._slices.append((edge, version))
        self._variants = variants or {}
        self.shadows = [v.tag for v in spec.by_role("shadow")]

    @property
    def stable(self) -> str:
        return self.spec.stable.tag

    def choose(self, routing_key: str | None = None, pin: str | None = None) -> Choice:
        if pin:
            return Choice(self.resolve_pin(pin), "pinned")
        sticky = self.spec.sticky and bool(routing_key)
        point = key_point(routing_key) if sticky and routing_key else self._rng.random() * 100
        for edge, version in self._slices:
            if point < edge:
                return Choice(version.tag, version.role, sticky)
        return Choice(self.stable, "stable", sticky)

    def resolve_pin(self, pin: str) -> str:
        """A full tag, a model name (the part before ':') or a variant name."""
        live = [v.tag for v in self.spec.versions]
        for tag in live:
            if pin in (tag, tag.split(":")[0], self._variants.get(tag)):
                return tag
        raise UnknownPin(f"X-Model-Version {pin!r} matches no live version; live: {', '.join(live)}")
