"""OpenTelemetry spans for a request's way through Switchyard: route, queue wait, inference (with the
batch it ran in) and shadow copies, under BentoML's own HTTP span.

Only the API is used here; BentoML sets up the SDK and exporter from its `tracing` configuration
(docs/monitoring.md) and the service hands its provider over (`use_provider`): BentoML keeps it to
itself instead of making it the global one. Without it the tracer is a no-op, and `recording()` lets
callers skip even that.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace

_tracer: Any = trace.get_tracer("switchyard")
_exporting = False


def use_provider(provider: Any, exporting: bool) -> None:
    """Make spans with `provider` (BentoML's), so they reach its exporter under its HTTP spans. `exporting`:
    BentoML has an exporter configured (its sampler records every span, exported or not)."""
    global _tracer, _exporting
    _tracer, _exporting = provider.get_tracer("switchyard"), exporting


def recording() -> bool:
    return trace.get_current_span().is_recording()


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A child span of the current one, named switchyard.<name>; nothing at all when nothing records
    (the hot path then pays one context lookup)."""
    if not recording():
        yield None
        return
    with _tracer.start_as_current_span(f"switchyard.{name}",
                                      attributes={f"switchyard.{k}": v for k, v in attributes.items()}) as s:
        yield s


@contextmanager
def server_span(name: str, carrier: Mapping[str, str], **attributes: Any) -> Iterator[None]:
    """A request's own span where no HTTP server made one (gRPC), parented on the caller's `traceparent`, so
    `span` and `batch_spans` below it have a parent. None when nothing is exported: BentoML's sampler would
    record every span (sampled or not) for nobody."""
    if not _exporting:
        yield
        return
    with _tracer.start_as_current_span(f"switchyard.{name}", context=propagate.extract(carrier),
                                      kind=trace.SpanKind.SERVER,
                                      attributes={f"switchyard.{k}": v for k, v in attributes.items()}):
        yield


def batch_spans(began_ns: int, queue_s: float, inference_s: float, **attributes: Any) -> None:
    """Queue wait and inference as two spans, timed after the fact: the batch ran on another thread,
    for several requests at once, so the batcher cannot hold a span per request."""
    attrs = {f"switchyard.{k}": v for k, v in attributes.items()}
    queued_until = began_ns + int(queue_s * 1e9)
    _tracer.start_span("switchyard.queue", start_time=began_ns, attributes=attrs).end(end_time=queued_until)
    _tracer.start_span("switchyard.inference", start_time=queued_until, attributes=attrs).end(
        end_time=queued_until + int(inference_s * 1e9))


def current() -> Any | None:
    """The current span when it records, else None: kept by work that ends after its request's handler (a
    stream), to parent the spans it makes later."""
    now = trace.get_current_span()
    return now if now.is_recording() else None


def stream_spans(parent: Any, ended_ago_s: float, first_token_s: float, total_s: float, **attributes: Any) -> None:
    """A generation's two phases as spans, timed after the fact (its tokens came from a loop shared by every
    stream, one step at a time): "prefill" from arrival to the first token (the wait for a place included),
    "decode" from there to the end. No span per token."""
    attrs = {f"switchyard.{k}": v for k, v in attributes.items()}
    end = time.time_ns() - int(ended_ago_s * 1e9)
    began = end - int(total_s * 1e9)
    first = began + int(first_token_s * 1e9)
    context = trace.set_span_in_context(parent)
    _tracer.start_span("switchyard.prefill", context=context, start_time=began, attributes=attrs).end(end_time=first)
    _tracer.start_span("switchyard.decode", context=context, start_time=first, attributes=attrs).end(end_time=end)


def now_ns() -> int:
    return time.time_ns()
