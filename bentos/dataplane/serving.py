"""One serving path for every protocol: admit a call, run it, keep its books.

A protocol adapter (REST, OIP over HTTP, the playground; SSE, OpenAI and gRPC next) turns its request
into a `CallMeta` and items, and an `Answer` back into its response: nothing else. Everything between
happens here, once, in this order:

    admit:  keys and rates (the gate) -> the endpoint -> admission (requests and bytes in flight) -> the pin
    infer:  the endpoint routes, batches and answers -> one payload-log entry
    generate: the endpoint routes, the version's decode loop writes -> one payload-log entry at the end

No request runs a control-plane query: an endpoint this worker does not know yet (created through
another worker a moment ago) makes the engine's poll look at once, and the request waits for that look,
briefly, and not at all while the control plane is away; then it is served, or a 404.
"""

from __future__ import annotations

from typing import Any, Protocol

from bentos.dataplane.access import AccessGate, Admission, Caller
from bentos.dataplane.call import Call, CallMeta
from bentos.dataplane.endpoint import DIRECT, Answer, Endpoint
from bentos.dataplane.generation import Generation
from bentos.dataplane.guardrails import Guard
from bentos.dataplane.metrics import Metrics
from bentos.dataplane.payloads import PayloadLog, entry
from bentos.errors import BodyTooLarge, ModelFailure, NotFound, ServingError
from bentos.settings import ServeSettings
from bentos.tasks.text_generation import SamplingParams


class Registry(Protocol):
    """What serving needs of whoever keeps this worker's endpoints (the engine)."""

    endpoints: dict[str, Endpoint]

    async def look(self) -> None:
        """Have the control plane looked at now (a call asked for an endpoint unknown or not ready here) and
        wait, briefly, for that look; return at once while the control plane is away."""
        ...

    async def preview(self, name: str, version: str) -> str:
        """Load a stored version of endpoint `name` for pinned use; its full tag (NotFound if none)."""
        ...


class Ticket:
    """One call through `Serving`: `async with serving.admit(meta) as ticket` holds admission for the
    call's life (released on every exit, cancellation included); `ticket.infer` runs it."""

    __slots__ = ("call", "caller", "endpoint", "meta", "serving", "size")

    endpoint: Endpoint  # found on entering

    def __init__(self, serving: Serving, meta: CallMeta, caller: Caller) -> None:
        self.serving, self.meta, self.caller = serving, meta, caller
        self.size = 0  # body bytes reserved in admission: as they arrive (`reserve`), not as declared
        self.call = DIRECT

    async def __aenter__(self) -> Ticket:
        serving, meta = self.serving, self.meta
        self.endpoint = await serving.endpoint(meta.endpoint)
        limit = self.endpoint.limits.max_body_bytes
        if meta.declared_bytes is not None and meta.declared_bytes > limit:  # refused before a byte is read
            raise BodyTooLarge(limit, "limits.max_body_bytes")
        serving.deny_on(serving.admission.take, self.size, key=self.caller.key)
        try:
            pin = await serving.pin(self.endpoint, self.caller, meta)
        except BaseException:
            serving.admission.give(self.size)
            raise
        self.call = Call(meta.routing_key, pin, meta.source, meta.protocol, self.caller.key, meta.deadline,
                         self.caller.may_prioritize, self.caller.weight)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.serving.admission.give(self.size)

    def reserve(self, nbytes: int) -> None:
        """`nbytes` more of the body arrived: held in admission until the call ends (503 past the cap)."""
        self.serving.deny_on(self.serving.admission.grow, nbytes, key=self.caller.key)
        self.size += nbytes

    def body_read(self) -> None:
        """The body is parsed: its bytes leave admission (a stream holds its request place, not its body)."""
        self.serving.admission.give(self.size)
        self.size = 0

    async def generate(self, prompt: str, params: SamplingParams, field: str = "prompt") -> Generation:
        """Start writing on `prompt`: returns once the first token exists (every refusal before is an error);
        the caller reads the generation and closes it on every exit, which writes its payload-log entry. With
        guardrails, the prompt is checked first (`field` is what a refusal names) and the text is released a
        checked chunk at a time."""
        guard = self.serving.guard(self.endpoint)
        if guard is not None:
            await guard.admit(prompt, "", field)
        generation = await self.endpoint.generate(prompt, params, self.call)
        if guard is not None:
            generation.window = guard.window(generation.version)
        generation.on_close.append(lambda g: self.serving.log_generation(self, prompt, g))
        return generation

    async def infer(self, items: list[Any], options: dict[str, Any] | None = None) -> Answer:
        """One forward pass over `items`; `options` are the task's decode options (for the payload log)."""
        answer = await self.endpoint.handle(items, self.call)
        self.serving.log_payload(self, items, answer, options or {})
        return answer


class Serving:
    def __init__(self, registry: Registry, gate: AccessGate, admission: Admission, metrics: Metrics,
                 payloads: PayloadLog | None, settings: ServeSettings) -> None:
        self.registry, self.gate, self.admission = registry, gate, admission
        self.metrics, self.payloads, self.settings = metrics, payloads, settings
        self._guards: dict[str, Guard] = {}

    def guard(self, endpoint: Endpoint) -> Guard | None:
        """The endpoint's guardrails (made once per policy)."""
        policy = endpoint.config.guardrails
        if policy is None:
            return None
        made = self._guards.get(endpoint.name)
        if made is None or made.policy is not policy:
            made = self._guards[endpoint.name] = Guard(endpoint.name, policy, self._classify, self._count_check)
        return made

    async def _classify(self, name: str, text: str) -> dict[str, float]:
        """A guardrail's classifier: the text through that endpoint's own batcher, its label scores."""
        try:
            endpoint = await self.endpoint(name)
        except NotFound:  # the operator's policy names it: the server's fault, not the caller's
            raise ModelFailure(f"guardrail classifier {name!r} is not an endpoint here (the endpoint's "
                               "guardrails)") from None
        if endpoint.task.name != "text-classification":
            raise ModelFailure(f"guardrail classifier {name!r} is a {endpoint.task.name} endpoint, not "
                               "text-classification (the endpoint's guardrails)")
        answer = await endpoint.handle([text], Call(source="guardrail"))
        return dict(answer.codec.decode(answer.outputs)[0]["scores"])

    def _count_check(self, endpoint: str, version: str, stage: str, label: str, hit: bool) -> None:
        self.metrics.guard_checks.labels(endpoint, version, stage, label).inc()
        if hit:
            self.metrics.guard_hits.labels(endpoint, version, stage, label).inc()

    async def endpoint(self, name: str) -> Endpoint:
        """The endpoint as this worker serves it; one this worker lacks, or that has no deployment here yet, after
        the engine's next look at the control plane."""
        endpoint = self.registry.endpoints.get(name)
        if endpoint is None or not endpoint.ready:
            await self.registry.look()
            endpoint = self.registry.endpoints.get(name)
        if endpoint is None:
            raise NotFound(f"unknown endpoint {name!r}; endpoints: {', '.join(sorted(self.registry.endpoints))}")
        return endpoint

    def admit(self, meta: CallMeta) -> Ticket:
        """The caller (keys and rates), checked now; the endpoint, admission and the pin on entering the
        ticket. Every refusal of the gate or admission is counted as denied (key and status)."""
        caller: Caller = self.deny_on(self.gate.admit, meta.credentials, meta.client, key="")
        return Ticket(self, meta, caller)

    def deny_on(self, check: Any, *args: Any, key: str) -> Any:
        try:
            return check(*args)
        except ServingError as exc:
            self.metrics.deny(exc, key)
            raise

    async def pin(self, endpoint: Endpoint, caller: Caller, meta: CallMeta) -> str | None:
        """The version a call may pin: the gate decides who may pin at all (403); with pinning off
        (SWITCHYARD_ALLOW_PINNING=false) every protocol routes as if no pin was sent."""
        pin: str | None = self.deny_on(self.gate.pin_for, caller, meta.pin, key=caller.key)
        if pin is None or not self.settings.allow_pinning:
            return None
        if not meta.stored_pins:
            return pin  # a live version by tag, name or variant: the router resolves it (404 names the live ones)
        return await self.version_pin(endpoint, pin)

    async def version_pin(self, endpoint: Endpoint, version: str) -> str:
        """A full tag for a version pin (OIP's /versions/{version}, the playground): a live or preview tag,
        or its version part (Triton clients send only that), else a stored version loaded as a preview."""
        for tag in [*endpoint.slots, *endpoint.previews]:
            if version in (tag, tag.split(":")[-1]):
                return tag
        return await self.registry.preview(endpoint.name, version)

    def log_generation(self, ticket: Ticket, prompt: str, gen: Generation) -> None:
        if self.payloads is None or ticket.meta.source != "api" or not self.payloads.sampled():
            return
        endpoint, call = ticket.endpoint, ticket.call
        usage = gen.usage
        self.payloads.put(entry(endpoint=endpoint.name, redacted=endpoint.config.redact_payloads,
                                version=gen.version, route=gen.route, latency_ms=gen.total_s * 1000, key=call.key,
                                protocol=call.protocol, items=[prompt],
                                response=[{"text": gen.text, "finish_reason": gen.finish_reason,
                                           "outcome": gen.outcome, "prompt_tokens": usage.prompt_tokens,
                                           "completion_tokens": usage.completion_tokens,
                                           **_violations(gen)}]))

    def log_payload(self, ticket: Ticket, items: list[Any], answer: Answer, options: dict[str, Any]) -> None:
        """One sampled entry per answered call, whatever its protocol: inputs, decoded results, who and how."""
        if self.payloads is None or ticket.meta.source != "api" or not self.payloads.sampled():
            return
        endpoint, call = ticket.endpoint, ticket.call
        self.payloads.put(entry(endpoint=endpoint.name, redacted=endpoint.config.redact_payloads,
                                version=answer.version, route=answer.route, latency_ms=answer.total_s * 1000,
                                key=call.key, protocol=call.protocol, items=items,
                                response=answer.codec.decode(answer.outputs, **options)))


def _violations(gen: Generation) -> dict[str, Any]:
    """The payload log's mark of what the output guardrails did: the cut, and what was flagged."""
    window = gen.window
    if window is None or (window.cut is None and not window.flagged):
        return {}
    return {"guardrails": {"cut": window.cut.as_dict() if window.cut else None,
                           "flagged": [v.as_dict() for v in window.flagged]}}
