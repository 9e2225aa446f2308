"""Serving settings, read from SWITCHYARD_* environment variables when the service starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Role = Literal["viewer", "operator", "admin"]
# Each role may do what the roles before it may: viewers read, operators change splits and run rollouts,
# admins also manage endpoints and API keys.
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")


# A secret shorter than this, or with spaces around it, is refused when the service starts: an empty
# SWITCHYARD_ADMIN_TOKEN once let a bearer token of one non-breaking space in as an admin.
MIN_SECRET_CHARS = 16
MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def strong_secret(value: SecretStr | None, variable: str) -> SecretStr | None:
    """`value` if it is a usable secret; a ValueError naming `variable` and the rule otherwise."""
    if value is None:
        return None
    raw = value.get_secret_value()
    if len(raw) < MIN_SECRET_CHARS or raw != raw.strip() or not raw.isprintable():
        raise ValueError(f"{variable} must be at least {MIN_SECRET_CHARS} printable characters with no spaces "
                         f"around them (got {len(raw)}); {MAKE_ONE}")
    return value


class AdminToken(BaseModel):
    """A named admin token with its role: {"token": "...", "role": "operator"}."""

    token: SecretStr
    role: Role = "admin"

    @field_validator("token")
    @classmethod
    def _strong(cls, value: SecretStr) -> SecretStr:
        strong_secret(value, "SWITCHYARD_ADMIN_TOKENS: each token")
        return value


class Principal(BaseModel):
    """Who called the admin API: the token's name (the audit actor) and its role."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class PayloadLogSettings(BaseModel):
    """SWITCHYARD_PAYLOAD_LOG, JSON: {"sample": 0.05, "dir": "/var/log/switchyard"} and optional bounds."""

    sample: float = Field(gt=0, le=1, description="Share of requests logged.")
    dir: Path = Field(description="Where the JSON Lines files go (created if missing).")
    max_file_mb: float = Field(16, gt=0, le=4096, description="A file is rotated past this size.")
    max_total_mb: float = Field(256, gt=0, le=1_000_000, description="All files together stay under this.")


UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}
MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*|%)\s*$")


def parse_memory(text: str, limit: int) -> int:
    """'2000000000', '1.5GiB', '512Mi', '40%' (of `limit`) -> bytes."""
    match = MEMORY.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit != "%" and unit not in UNITS):
        raise ValueError(f"SWITCHYARD_MODEL_MEMORY: {text!r} is not a size like 2000000000, 1.5GiB, 512MiB or 40%")
    number = float(match.group(1))
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError(f"SWITCHYARD_MODEL_MEMORY: a share must be over 0 and at most 100%, got {text!r}")
        return int(limit * number / 100)
    return int(number * UNITS[unit])


def memory_limit(cgroup: Path = Path("/sys/fs/cgroup/memory.max"), meminfo: Path = Path("/proc/meminfo")) -> int:
    """This container's memory limit (cgroup v2, a Kubernetes `limits.memory`), else the machine's memory."""
    try:
        raw = cgroup.read_text().strip()
        if raw != "max":
            return int(raw)
    except (OSError, ValueError):
        pass
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 34


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    # Control plane
    state_dir: Path = Field(Path(".state/control"), description="SQLite control plane (WAL) lives here.")
    db_url: SecretStr | None = Field(None, description="postgresql://... to share the control plane.")
    poll_interval_s: float = Field(0.25, gt=0, le=10, description="How often workers look for a new revision.")
    db_timeout_s: float = Field(5.0, gt=0, le=300, description=(
        "A control-plane call that takes longer is given up (503 for admin calls); also Postgres's "
        "statement_timeout and, capped at 10 s, its connect timeout."))
    default_models: dict[str, str] = Field(
        default_factory=dict, description='Override the first-start choice, e.g. {"digits": "digits-cnn-fp32"}.')

    # Admin API
    admin_token: SecretStr | None = Field(None, description="Bearer token for /v1/admin; its actor name is 'admin'.")
    admin_tokens: dict[str, SecretStr | AdminToken] = Field(
        default_factory=dict, description='More named tokens, each an admin or with a role: {"alice": "...", '
        '"bob": {"token": "...", "role": "viewer"}}; roles: viewer, operator, admin.')

    # Inference access: API keys (managed through /v1/admin/keys), rate limits, admission
    require_api_key: bool = Field(False, description="Inference needs an API key (X-API-Key or Bearer).")
    ip_rate: float = Field(0.0, ge=0, description="Requests per second per client IP without keys; 0 = off.")
    ip_burst: float = Field(20.0, ge=1, description="Burst per client IP.")
    ip_table_size: int = Field(10_000, ge=1, description="Client IPs remembered (LRU) for the per-IP limit.")
    trusted_proxies: list[str] = Field(
        default_factory=list, description='Proxies whose X-Forwarded-For is believed, e.g. ["10.0.0.0/8"].')
    max_concurrency: int = Field(512, ge=1, description="Inference requests in flight per worker; more get 503.")
    max_inflight_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Request bytes in flight per worker; more get 503.")

    # Runtime
    threads: int = Field(0, ge=0, le=256, description=(
        "ORT intra-op threads per batch; 0 = this worker's cores / batches_in_flight."))
    batches_in_flight: int = Field(0, ge=0, le=64, description=(
        "Batches per version in the model at once, a thread each; 0 = this worker's cores / threads."))
    workers: int = Field(1, ge=1, le=64, description="Workers sharing the machine (for the thread default).")
    providers: list[str] = Field(
        default_factory=list, description='ORT execution providers that must be present, in order, e.g. '
        '["CUDAExecutionProvider"]; empty = the best available (TensorRT, CUDA, CPU).')

    # Many models: residency (endpoints with `residency: on-demand` load on their first request)
    model_memory: str | None = Field(None, description=(
        "Memory for loaded model versions, per worker: bytes (2000000000, 1.5GiB, 512MiB) or a share of the "
        "container's memory limit (40%). A load that would pass it unloads the least recently used idle "
        "on-demand versions first; unset: no budget."))
    min_resident_s: float = Field(0.0, ge=0, le=3600, description=(
        "Thrash guard, for models that take seconds to load: a version loaded less than this long ago is not "
        "unloaded to make room for one itself unloaded that recently; that request waits (within its "
        "deadline) instead. 0: off (a cheap load costs less than the wait)."))

    # Batching
    max_batch_size: int = Field(32, ge=1, le=1024, description="Rows per model call.")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="Extra wait for a fuller batch; 0 = never wait.")
    max_queue: int = Field(1024, ge=1, description="Queued requests per version before 503.")
    request_timeout_s: float = Field(30.0, gt=0, description="Deadline for a request to get a model slot.")
    grpc_port: int | None = Field(3001, ge=1, le=65535, description=(
        "The Open Inference Protocol over gRPC, in every worker; false turns it off."))
    grpc_host: str | None = Field(None, description=(
        "The address gRPC listens on; default: the HTTP server's own (bentoml serve --host)."))
    fast_lane: bool = Field(True, description=(
        "Send /v1 and /v2 requests to Switchyard's app directly, around BentoML's middleware "
        "(docs/how-serving-works.md)."))

    # Input limits
    max_rows: int = Field(64, ge=1, le=4096, description="Rows or texts per request (endpoints may set their own).")
    max_chars: int = Field(2000, ge=1, description="Characters per text.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body size limit.")
    max_image_pixels: int = Field(16_000_000, ge=1, description="Width x height per uploaded image.")
    max_request_pixels: int = Field(32_000_000, ge=1, description=(
        "Width x height of all images in one request together: what decoding one request may cost."))
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description=(
        "A request body must arrive within this long, or the connection gets 408 and is closed."))

    # Generation (endpoints of task text-generation; each may set its own limits)
    max_prompt_tokens: int = Field(1024, ge=1, description="Prompt tokens per generation request.")
    max_new_tokens: int = Field(512, ge=1, description="The highest max_tokens a generation request may ask.")
    max_streams: int = Field(32, ge=1, le=4096, description="Generation requests decoding at once per version.")
    max_waiting: int = Field(256, ge=0, description="Generation requests waiting for a place before 503.")
    kv_cache_bytes: int = Field(256 * 1024 * 1024, ge=1024, description=(
        "KV-cache budget per generative version and worker: requests whose prompt plus max_tokens do not fit "
        "wait, then get 503; never an out-of-memory."))
    prefill_tokens: int = Field(512, ge=1, description=(
        "Prompt tokens prefilled in one decode step: bounds how long newcomers stall the streams in flight "
        "(a longer prompt is prefilled in chunks of this many over successive steps)."))
    prefix_cache_share: float = Field(0.25, ge=0, le=0.9, description=(
        "The part of each generative version's KV budget kept for prompt prefixes reused across requests of "
        "one API key (an endpoint's limits.prefix_cache_share overrides it); 0 turns the cache off."))
    fair_shares: bool = Field(True, description=(
        "Generation: waiting requests start by fair share between API keys (the least-served key first, by "
        "generated tokens over its weight), and a key with its share of the queue waiting gets 429; false: "
        "arrival order within each priority class."))
    stall_timeout_s: float = Field(30.0, gt=0, description=(
        "A stream whose reader takes nothing for this long is ended (its KV freed)."))

    # Endpoints and task types
    config: str | None = Field(None, description="The endpoints file; default ./switchyard.yaml when present.")
    task_modules: list[str] = Field(default_factory=list, description='Plug-in task modules, e.g. ["my_tasks"].')

    # Monitoring
    drift_sample: float = Field(0.05, ge=0, le=1, description=(
        "Share of answered API requests added to their version's live drift profile; 0 turns drift off."))
    payload_log: PayloadLogSettings | None = Field(None, description=(
        'Sampled request/response logging, JSON: {"sample": 0.05, "dir": "/var/log/switchyard"}; off when unset.'))

    # Playground
    playground: bool = Field(True, description="Serve the Gradio playground at /playground; false: 404 there.")

    # Routing
    allow_pinning: bool = Field(True, description=(
        "Honour pins on every way in: X-Model-Version, OIP's /versions/{version}, the playground's pinned mode."))
    shadow_queue: int = Field(64, ge=1, description="Shadow requests waiting; more are dropped and counted.")
    canary_compare_sample: float = Field(
        0.2, ge=0, le=1, description="Share of a canary's answers also asked of stable, in the background and "
                                     "dropped when busy, so a rollout's agreement check works in canary steps.")

    @field_validator("model_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None:
            parse_memory(value, 1 << 40)  # a ValueError naming the variable and the forms it takes
        return value

    def memory_budget(self) -> int | None:
        """SWITCHYARD_MODEL_MEMORY in bytes (a share of the cgroup's memory limit, or of the machine's)."""
        return None if self.model_memory is None else parse_memory(self.model_memory, memory_limit())

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _port_or_off(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("false", "off", "no", "") else value

    @field_validator("admin_token")
    @classmethod
    def _strong_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        return strong_secret(value, "SWITCHYARD_ADMIN_TOKEN")

    @field_validator("admin_tokens")
    @classmethod
    def _strong_admin_tokens(cls, value: dict[str, SecretStr | AdminToken]) -> dict[str, SecretStr | AdminToken]:
        for name, tok in value.items():
            if isinstance(tok, SecretStr):
                strong_secret(tok, f"SWITCHYARD_ADMIN_TOKENS: {name}'s token")
        return value

    # Circuit breaker
    circuit_failures: int = Field(5, ge=1, description="Consecutive failures that open a version's circuit.")
    circuit_error_rate: float = Field(0.5, gt=0, le=1, description="Error rate in the window that opens it.")
    circuit_window_s: float = Field(30.0, gt=0, description="Window for the error rate.")
    circuit_min_requests: int = Field(20, ge=1, description="Requests in the window before the rate counts.")
    circuit_cooldown_s: float = Field(5.0, gt=0, description="Open time before a half-open probe.")

    # Prediction cache
    cache_size: int = Field(0, ge=0, description="Entries per endpoint; 0 disables the cache.")
    cache_ttl_s: float = Field(300.0, gt=0, description="Seconds a cached prediction stays valid.")

    # Stats shared through the control plane (for /v1/admin/stats and canary analysis)
    stats_flush_s: float = Field(1.0, gt=0, description="How often a worker writes its per-version stats.")

    def parallelism(self, cores: int) -> tuple[int, int]:
        """(batches in flight per version, intra-op threads per batch) for this worker's share of the cores.
        By default two batches of half the cores each: on 2 cores, two one-thread batches served more
        requests/s than one two-thread batch, at a lower batch-1 latency (ORT's threads do not spin between
        runs here, so a second thread pays a wake-up on every run; docs/benchmarks.md, "90-10-2threads" rows)."""
        share = max(1, cores // self.workers)
        # Two at most by default: more is unmeasured, and each extra batch trades latency for throughput.
        in_flight = self.batches_in_flight or max(1, min(2, share // (self.threads or 1)))
        return in_flight, self.threads or max(1, share // in_flight)

    def tokens(self) -> dict[str, Principal]:
        """Token value -> who it is; SWITCHYARD_ADMIN_TOKEN is the actor "admin" with the admin role."""
        named = {}
        for name, tok in self.admin_tokens.items():
            spec = tok if isinstance(tok, AdminToken) else AdminToken(token=tok)
            named[spec.token.get_secret_value()] = Principal(name=name, role=spec.role)
        if self.admin_token is not None:
            named[self.admin_token.get_secret_value()] = Principal(name="admin", role="admin")
        return named
