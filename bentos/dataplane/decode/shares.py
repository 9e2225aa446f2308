"""Fair shares between tenants of one generative version: virtual token counters.

After Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). Each tenant (an API key; the
callers without a key are one tenant together) has a counter of the service it got: generated tokens, plus
prompt tokens at `prompt_cost` each, divided by the tenant's weight. The scheduler admits the waiting
request whose tenant has the lowest counter, so backlogged tenants converge to equal weighted service, and
a tenant alone is never held back (its counter only orders it against others).

The prompt cost defaults to 0: equal weights then mean equal generated tokens per second, whatever the
prompt lengths. (What a long prompt costs the others' steps is bounded by chunked prefill, in the scheduler,
not by the share.)

A tenant that comes back after having nothing queued or running starts level with the least-served active
tenant: idle time banks no credit to spend in a burst later.

`enabled=False` (SWITCHYARD_FAIR_SHARES=false) makes every counter read 0: requests start in arrival order
within their priority class, and no tenant is refused for its share of the queue (what the benchmark
compares against).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class FairShare:
    weights: dict[str, float] = field(default_factory=dict)
    prompt_cost: float = 0.0
    enabled: bool = True
    counters: dict[str, float] = field(default_factory=dict)

    def weight(self, tenant: str) -> float:
        return max(1e-6, float(self.weights.get(tenant, 1.0)))

    def served(self, tenant: str) -> float:
        return self.counters.get(tenant, 0.0) if self.enabled else 0.0

    def charge(self, tenant: str, generated: int = 0, prompt: int = 0) -> None:
        cost = generated + self.prompt_cost * prompt
        if cost:
            self.counters[tenant] = self.served(tenant) + cost / self.weight(tenant)

    def join(self, tenant: str, active: Iterable[str]) -> None:
        """`tenant` has work again after none: lift it to the least-served of the tenants that have work."""
        floor = min((self.served(t) for t in active if t != tenant), default=None)
        if floor is not None and self.served(tenant) < floor:
            self.counters[tenant] = floor

    def share(self, tenant: str, active: Iterable[str]) -> float:
        """The part of the machine `tenant` is owed while these tenants have work: its weight's fraction."""
        total = sum(self.weight(t) for t in {*active, tenant})
        return self.weight(tenant) / total
