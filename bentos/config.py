"""Endpoints as data: `switchyard.yaml` (or SWITCHYARD_CONFIG) and the admin API share one model.

An endpoint is a name, a task type, input limits, optionally a declared input signature,
and optionally the model its first deployment should use.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bentos.errors import ConfigError
from bentos.schemas import TAG_PATTERN
from bentos.tasks import get_task

NAME = re.compile(r"^[a-z0-9-]{1,40}$")
# Path segments under /v1 that are not endpoints: the fixed routes' (the app refuses to start with one
# missing), and the OpenAI-compatible API's (/v1/chat/completions, /v1/completions, /v1/models) before
# its routes land, so that no endpoint created now takes them later.
RESERVED = frozenset({"admin", "health", "openapi.json", "chat", "completions", "models"})
DEFAULT_FILE = "switchyard.yaml"


class TensorDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    dtype: Literal["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool", "object"]
    shape: list[int | str] = Field(min_length=1, max_length=8, description='Leading axis "batch".')
    range: tuple[float, float] | None = Field(None, description="Inclusive value range (pixel arrays).")


class SignatureDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[TensorDecl] = Field(min_length=1, max_length=64)
    outputs: list[TensorDecl] = Field(default_factory=list, max_length=64)


class EndpointLimits(BaseModel):
    """Per-endpoint input limits; unset ones take the server's SWITCHYARD_MAX_* defaults."""

    model_config = ConfigDict(extra="forbid")
    max_rows: int | None = Field(None, ge=1, le=4096, description="Rows or texts per request.")
    max_chars: int | None = Field(None, ge=1, le=1_000_000, description="Characters per text.")
    max_body_bytes: int | None = Field(None, ge=1024, le=256 * 1024 * 1024, description="Request body size.")
    max_image_pixels: int | None = Field(None, ge=1, le=100_000_000, description="Width x height per image.")
    max_request_pixels: int | None = Field(None, ge=1, le=400_000_000,
                                           description="Width x height of all images in a request together.")
    body_timeout_s: float | None = Field(None, gt=0, le=3600, description="Seconds for the request body to arrive.")
    # Generation (text-generation endpoints): what one stream may ask for, and how many run at once.
    max_prompt_tokens: int | None = Field(None, ge=1, le=1_000_000, description="Prompt tokens per request.")
    max_new_tokens: int | None = Field(None, ge=1, le=100_000, description="The highest max_tokens a request may ask.")
    max_streams: int | None = Field(None, ge=1, le=4096, description="Generation requests decoding at once, per "
                                    "version and worker; more wait (limits.max_waiting) or get 503.")
    max_waiting: int | None = Field(None, ge=0, le=100_000, description="Generation requests waiting for a place.")
    kv_cache_bytes: int | None = Field(None, ge=1024, le=1 << 40, description="KV-cache budget per version and "
                                       "worker; a request's prompt plus max_tokens must fit in it.")
    prefix_cache_share: float | None = Field(None, ge=0, le=0.9, description="The part of kv_cache_bytes kept for "
                                             "prompt prefixes reused across requests (per tenant); 0 turns it off.")


class SpeculationConfig(BaseModel):
    """text-generation: speculative decoding by prompt lookup, for greedy requests (temperature 0)."""

    model_config = ConfigDict(extra="forbid")
    tokens: int = Field(5, ge=1, le=16, description="Tokens drafted per step (at most) from n-grams of the prompt "
                        "and the text so far, verified in the step's one forward pass.")
    ngram: int = Field(3, ge=1, le=8, description="The longest suffix of the text looked up in it.")
    min_acceptance: float = Field(0.3, ge=0, le=1, description="A request whose drafted tokens are accepted less "
                                  "often than this (judged after 16 of them) stops speculating.")
    pass_tokens: int = Field(8, ge=2, le=256, description="The widest verifying pass over the whole batch, "
                             "rows x (1 + draft): drafts are cut to fit, so a batch of more than pass_tokens / 2 rows "
                             "decodes without them (a wide pass over a full batch costs more than it saves on a CPU).")


class GuardCheck(BaseModel):
    """One check of a guardrail policy: a classifier served here and/or blocked patterns, and what a hit does."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern="^[A-Za-z0-9_.-]+$", description="Named in refusals.")
    classifier: str | None = Field(None, max_length=40, description="A text-classification endpoint on this "
                                   "server; the text is sent through its own batcher.")
    labels: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict, max_length=64, description=(
        "Classifier label -> threshold: a score at or over it is a hit."))
    patterns: dict[str, Annotated[str, Field(min_length=1, max_length=1000)]] = Field(
        default_factory=dict, max_length=64, description="Label -> regular expression (RE2: linear time); a match "
        "anywhere is a hit.")
    action: Literal["block", "flag"] = Field("block", description="block: refuse the prompt, or end the stream "
                                             "before the text; flag: count and log it, let it through.")

    @model_validator(mode="after")
    def _something(self) -> GuardCheck:
        if not self.patterns and not (self.classifier and self.labels):
            raise ValueError("a check needs patterns, or a classifier with labels")
        if self.labels and not self.classifier:
            raise ValueError("labels need a classifier")
        for label, pattern in self.patterns.items():
            error = pattern_error(pattern)
            if error:
                raise ValueError(f"patterns.{label}: {error}")
        return self


class Guardrails(BaseModel):
    """text-generation: checks on prompts (`input`) and on the text as it is written (`output`)."""

    model_config = ConfigDict(extra="forbid")
    input: list[GuardCheck] = Field(default_factory=list, max_length=16)
    output: list[GuardCheck] = Field(default_factory=list, max_length=16)
    chunk_chars: int = Field(64, ge=8, le=4096, description="Output is held back and checked this many characters "
                             "at a time; a chunk that fails is never sent.")
    context_chars: int = Field(256, ge=0, le=16_384, description="Characters already sent that are checked again "
                                   "with each chunk (a phrase split over two chunks is still seen).")


def pattern_error(pattern: str) -> str | None:
    """What is wrong with a guardrail pattern under RE2, or None."""
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """An RE2 pattern (ValueError naming what is wrong): linear-time matching, so a guardrail pattern cannot be
    made to backtrack for minutes."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else "invalid"
        raise ValueError(detail.decode() if isinstance(detail, bytes) else str(detail)) from None


class EndpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="[a-z0-9-]{1,40}; the URL is /v1/{name}/{verb}.")
    task: str = Field(description="A task type: image-classification, text-classification, text-embedding, tensor, "
                      "text-generation.")
    model: str | None = Field(None, max_length=200, pattern=TAG_PATTERN, description=(
        "What the first deployment serves: a tag, a model name, or a model key or family (its best validated "
        "variant). Unset: the best validated version of this task."))
    limits: EndpointLimits = Field(default_factory=EndpointLimits)
    signature: SignatureDecl | None = Field(None, description="Declared inputs; versions must match it.")
    description: str = Field("", max_length=500)
    redact_payloads: bool = Field(False, description="The payload log keeps only hashes of this endpoint's inputs.")
    shared_prefixes: list[Annotated[str, Field(min_length=1, max_length=20_000)]] = Field(
        default_factory=list, max_length=16, description=(
            "text-generation: prompt beginnings (a system prompt) whose cached keys and values every caller may "
            "reuse; any other prefix is reused only by the API key that sent it."))
    speculation: SpeculationConfig | None = Field(None, description=(
        "text-generation: draft tokens by prompt lookup and verify them in one pass (same greedy output, fewer "
        "passes on text that copies from its prompt); off when unset."))
    guardrails: Guardrails | None = Field(None, description=(
        "text-generation: a policy on prompts and streamed text; off when unset."))
    residency: Literal["always", "on-demand"] = Field("always", description=(
        "always: every deployed version is loaded before traffic and stays; on-demand: a version loads on its "
        "first request and may be unloaded when idle to stay within SWITCHYARD_MODEL_MEMORY."))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"must match [a-z0-9-]{{1,40}}, got {value!r}")
        if value in RESERVED:
            raise ValueError(f"{value!r} is reserved (used by /v1/{value})")
        return value

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        try:
            get_task(value)
        except KeyError as exc:
            raise ValueError(str(exc).strip("'\"")) from None
        return value

    @model_validator(mode="after")
    def _signature_fits_task(self) -> EndpointConfig:
        if self.signature is not None:
            problems = get_task(self.task).check_signature(self.signature.model_dump(exclude_none=True) | {
                "outputs": [o.model_dump() for o in self.signature.outputs] or [{"name": "*"}]})
            if problems:
                raise ValueError(f"signature: {'; '.join(problems)}")
        return self

    def declared_signature(self) -> dict[str, Any] | None:
        return None if self.signature is None else self.signature.model_dump(exclude_none=True)


class EndpointRequest(EndpointConfig):
    """POST /v1/admin/endpoints: an endpoint and why it is created (audited)."""

    reason: str = Field(min_length=1, max_length=1000)

    def config(self) -> EndpointConfig:
        return EndpointConfig.model_validate(self.model_dump(exclude={"reason"}))


class SwitchyardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoints: list[EndpointConfig] = Field(default_factory=list)

    @field_validator("endpoints")
    @classmethod
    def _unique(cls, value: list[EndpointConfig]) -> list[EndpointConfig]:
        names = [e.name for e in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique; repeated: {', '.join(dupes)}")
        return value


# Where service.py lives: the repository root, or a bento's src/ (bentoml may serve from elsewhere).
SERVICE_ROOT = Path(__file__).resolve().parent.parent


def config_path(explicit: str | None, root: Path | None = None) -> Path | None:
    """SWITCHYARD_CONFIG when set (it must exist), else switchyard.yaml in the working directory,
    else the one beside service.py."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"SWITCHYARD_CONFIG={explicit}: no such file")
        return path
    roots = [root] if root is not None else [Path.cwd(), SERVICE_ROOT]
    return next((r / DEFAULT_FILE for r in roots if (r / DEFAULT_FILE).is_file()), None)


def _where(loc: tuple[Any, ...], raw: Any) -> str:
    """`endpoints[2].limits.max_rows (name: shop)`: the key path, and which endpoint it is in."""
    parts = []
    for p in loc:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    where = "".join(parts).lstrip(".")
    if len(loc) > 1 and loc[0] == "endpoints" and isinstance(loc[1], int):
        with contextlib.suppress(KeyError, IndexError, TypeError):
            where += f" (endpoint {raw['endpoints'][loc[1]]['name']!r})"
    return where


def load_config(path: Path | None) -> SwitchyardConfig:
    """The validated file, or an empty config; a bad file raises ConfigError naming the key."""
    if path is None:
        return SwitchyardConfig()
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML: {str(exc).splitlines()[0]}") from None
    try:
        return SwitchyardConfig.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {_where(e['loc'], raw) or 'top level'}: {e['msg']}{more}") from None
