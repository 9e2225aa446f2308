"""Prometheus metrics, exposed on BentoML's /metrics next to its own.

prometheus_client is imported when a worker starts, not at import time: BentoML sets
PROMETHEUS_MULTIPROC_DIR in each worker first, and that is how several workers'
metrics are aggregated (bentoml.metrics is a deprecated shim doing the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from bentos.dataplane.call import Call
from bentos.errors import ServingError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
COLD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AGREEMENT_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
KL_BUCKETS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # nats per token


@dataclass(frozen=True)
class Metrics:
    requests: Any
    request_duration: Any
    inference_duration: Any
    queue_wait: Any
    batch_size: Any
    cache_hits: Any
    fallbacks: Any
    shadow_dropped: Any
    shadow_agreement: Any
    token_kl: Any
    circuit_state: Any
    version_role: Any
    ready: Any
    denied: Any
    applied_revision: Any
    drift_score: Any
    prediction_drift: Any
    first_token: Any
    per_token: Any
    tokens: Any
    kv_occupancy: Any
    prefill_chunks: Any
    prefix_cached: Any
    speculative: Any
    guard_checks: Any
    guard_hits: Any
    streams: Any
    queue_depth: Any
    in_flight: Any
    memory_budget: Any
    resident_bytes: Any
    resident_versions: Any
    resident_total: Any
    loads: Any
    evictions: Any
    cold_start: Any
    load_waits: Any

    def deny(self, exc: ServingError, key: str) -> None:
        """A request refused at the gate or by admission, before any model: by key name and status."""
        self.denied.labels(key, DENIED_STATUS.get(exc.kind, "other")).inc()


class VersionSeries:
    """One live version's children of the per-request metrics, made once when the version goes live: each
    `.labels()` call costs microseconds, and a request touched six of them."""

    __slots__ = (
        "_counted",
        "batch_size",
        "circuit_state",
        "completion_tokens",
        "endpoint",
        "first_token",
        "in_flight",
        "inference_duration",
        "kv_occupancy",
        "per_token",
        "prefill_chunks",
        "prefix_cached",
        "prompt_tokens",
        "queue_depth",
        "queue_wait",
        "request_duration",
        "requests",
        "speculative_accepted",
        "speculative_rejected",
        "streams",
        "version",
    )

    def __init__(self, metrics: Metrics, endpoint: str, version: str) -> None:
        ev = endpoint, version
        self.endpoint, self.version, self.requests = endpoint, version, metrics.requests
        self.request_duration = metrics.request_duration.labels(*ev)
        self.inference_duration = metrics.inference_duration.labels(*ev)
        self.queue_wait = metrics.queue_wait.labels(*ev)
        self.batch_size = metrics.batch_size.labels(*ev)
        self.circuit_state = metrics.circuit_state.labels(*ev)
        # Generation (text-generation versions): made for every version, unused by the others.
        self.first_token = metrics.first_token.labels(*ev)
        self.per_token = metrics.per_token.labels(*ev)
        self.prompt_tokens = metrics.tokens.labels(*ev, "prompt")
        self.completion_tokens = metrics.tokens.labels(*ev, "completion")
        self.kv_occupancy = metrics.kv_occupancy.labels(*ev)
        self.prefill_chunks = metrics.prefill_chunks.labels(*ev)
        self.prefix_cached = metrics.prefix_cached.labels(*ev)
        self.speculative_accepted = metrics.speculative.labels(*ev, "accepted")
        self.speculative_rejected = metrics.speculative.labels(*ev, "rejected")
        self.streams = metrics.streams.labels(*ev)
        self.queue_depth = metrics.queue_depth.labels(*ev)
        self.in_flight = metrics.in_flight.labels(*ev)
        self._counted: dict[tuple[str, str, str, str, str], Any] = {}

    def count(self, route: str, outcome: str, call: Call) -> None:
        """One answer (or refusal) of this version: by route, outcome (ok, overloaded, rate_limited, invalid,
        error), and the call's source, key name and protocol."""
        labels = (route, outcome, call.source, call.key, call.protocol)
        child = self._counted.get(labels)
        if child is None:  # bounded: routes x outcomes x sources x live keys x protocols
            child = self._counted[labels] = self.requests.labels(self.endpoint, self.version, *labels)
        child.inc()


# The `status` label of switchyard_denied_total: HTTP's numbers, whatever the protocol, so dashboards and
# alerts keep one meaning.
DENIED_STATUS = {"unauthenticated": "401", "forbidden": "403", "rate_limited": "429", "overloaded": "503"}


@cache
def get_metrics() -> Metrics:
    """Create the metrics once per process."""
    from prometheus_client import Counter, Gauge, Histogram

    ev = ["endpoint", "version"]
    return Metrics(
        requests=Counter("switchyard_requests_total", "Requests by version, route and outcome.",
                         [*ev, "route", "outcome", "source", "key", "protocol"]),
        request_duration=Histogram("switchyard_request_duration_seconds", "End-to-end time in the model path.",
                                   ev, buckets=LATENCY_BUCKETS),
        inference_duration=Histogram("switchyard_inference_duration_seconds", "Model time of the request's batch.",
                                     ev, buckets=LATENCY_BUCKETS),
        queue_wait=Histogram("switchyard_queue_wait_seconds", "Time queued before the batch ran.", ev,
                             buckets=LATENCY_BUCKETS),
        batch_size=Histogram("switchyard_batch_size", "Rows in the batch that served the request.", ev,
                             buckets=BATCH_BUCKETS),
        cache_hits=Counter("switchyard_cache_hits_total", "Predictions served from the cache.", ev),
        fallbacks=Counter("switchyard_fallbacks_total", "Requests served by stable after a version failed.", ev),
        shadow_dropped=Counter("switchyard_shadow_dropped_total", "Shadow copies dropped (busy).", ev),
        shadow_agreement=Histogram("switchyard_shadow_agreement",
                                   "Agreement of shadow with primary: label match (classifiers), cosine (embeddings).",
                                   [*ev, "primary"], buckets=AGREEMENT_BUCKETS),
        token_kl=Histogram("switchyard_canary_token_kl", "Language models: mean per-token KL divergence (nats) of "
                           "the version's written tokens from the primary's, teacher-forced.", [*ev, "primary"],
                           buckets=KL_BUCKETS),
        circuit_state=Gauge("switchyard_circuit_state", "0 closed, 1 half-open, 2 open.", ev,
                            multiprocess_mode="max"),
        # 1 while the version holds that role in this worker's deployment, else 0 (alerts join on it).
        version_role=Gauge("switchyard_version_role", "1 if the version serves in this role.", [*ev, "role"],
                           multiprocess_mode="livemax"),
        ready=Gauge("switchyard_ready", "1 when every endpoint serves its deployment.", multiprocess_mode="livemin"),
        denied=Counter("switchyard_denied_total", "Requests refused before the model: 401/403 (key), 429 "
                       "(rate), 503 (admission), by API key name.", ["key", "status"]),
        # One series per live worker (pid label): replicas, or workers, that disagree for long are stuck.
        drift_score=Gauge("switchyard_drift_score", "PSI of a watched input feature: live traffic against the "
                          "version's validation data.", [*ev, "feature"], multiprocess_mode="livemax"),
        prediction_drift=Gauge("switchyard_prediction_drift", "PSI of the predicted class mix against the "
                               "version's validation predictions.", ev, multiprocess_mode="livemax"),
        first_token=Histogram("switchyard_time_to_first_token_seconds", "Generation: from arrival to the first "
                              "token (queue and prefill).", ev, buckets=LATENCY_BUCKETS),
        per_token=Histogram("switchyard_time_per_output_token_seconds", "Generation: mean time between a "
                            "stream's tokens after the first.", ev, buckets=TOKEN_BUCKETS),
        tokens=Counter("switchyard_tokens_total", "Generation: prompt and completion tokens; the rate of "
                       "completion tokens is tokens per second.", [*ev, "kind"]),
        kv_occupancy=Gauge("switchyard_kv_cache_occupancy", "Generation: the share of the version's KV-cache "
                           "budget held, 0 to 1.", ev, multiprocess_mode="livemax"),
        prefill_chunks=Counter("switchyard_prefill_chunks_total", "Generation: pieces of prompts longer than a "
                               "step's prefill budget (SWITCHYARD_PREFILL_TOKENS), each run in its own step.", ev),
        prefix_cached=Counter("switchyard_prefix_cache_tokens_total", "Generation: prompt tokens found in the "
                              "prefix cache (not computed again); against switchyard_tokens_total{kind=\"prompt\"}, "
                              "the hit rate.", ev),
        guard_checks=Counter("switchyard_guardrail_checks_total", "Generation guardrails: texts checked, by stage "
                             "(input: prompts, judged before routing, version \"\"; output: chunks) and label.",
                             [*ev, "stage", "label"]),
        guard_hits=Counter("switchyard_guardrail_violations_total", "Generation guardrails: checks that hit their "
                           "label (blocked or flagged); over switchyard_guardrail_checks_total, the violation rate.",
                           [*ev, "stage", "label"]),
        speculative=Counter("switchyard_speculative_tokens_total", "Generation: tokens drafted by prompt lookup "
                            "(limits.speculation), by result: accepted ones were written without a pass of "
                            "their own.", [*ev, "result"]),
        streams=Gauge("switchyard_streams_in_flight", "Generation: requests decoding or waiting to.", ev,
                      multiprocess_mode="livesum"),
        # What autoscaling reads (deploy/k8s/overlays/queue-autoscaling): each worker's, summed over the pod's workers.
        queue_depth=Gauge("switchyard_queue_depth", "Requests waiting for the model, sampled every second.", ev,
                          multiprocess_mode="livesum"),
        in_flight=Gauge("switchyard_requests_in_flight", "Requests waiting or in the model, sampled every "
                        "second.", ev, multiprocess_mode="livesum"),
        # Many models (bentos/dataplane/residency.py): one series per worker (pid), as the budget is per worker.
        memory_budget=Gauge("switchyard_model_memory_budget_bytes", "SWITCHYARD_MODEL_MEMORY of each worker.",
                            multiprocess_mode="liveall"),
        resident_bytes=Gauge("switchyard_resident_bytes", "A loaded version's measured size (0 once unloaded).", ev,
                             multiprocess_mode="liveall"),
        resident_versions=Gauge("switchyard_resident_versions", "Versions loaded in the worker.",
                                multiprocess_mode="liveall"),
        resident_total=Gauge("switchyard_resident_total_bytes", "Bytes of all versions loaded in the worker, "
                             "against its budget.", multiprocess_mode="liveall"),
        loads=Counter("switchyard_model_loads_total", "Versions loaded (deployments and on-demand loads).", ev),
        evictions=Counter("switchyard_model_evictions_total", "Versions unloaded to fit the memory budget or by "
                          "the repository API.", ev),
        cold_start=Histogram("switchyard_cold_start_seconds", "An on-demand load: from the first request to the "
                             "version serving.", ["endpoint"], buckets=COLD_BUCKETS),
        load_waits=Counter("switchyard_load_waits_total", "Requests that waited for an on-demand load.",
                           ["endpoint"]),
        applied_revision=Gauge("switchyard_applied_revision", "The deployment revision this worker serves.",
                               ["endpoint"], multiprocess_mode="liveall"),
    )
