"""text-generation: a causal language model that writes text token by token, with a KV cache.

The stored graph takes `input_ids`, `attention_mask` and `position_ids` ([batch, new tokens], the mask
over past and new) and the past keys and values of every layer (`past.{i}.key`, `past.{i}.value`:
[batch, kv heads, past, head dim]); it returns `logits` [batch, new tokens, vocab] and the present keys
and values (past plus new). One graph does prefill (a past of length 0) and decode (one new token).
Batches are left-padded: the mask hides the padding and the positions are each row's own.

The serving half owns the request (prompt or chat messages; sampling values checked with the field's
name), tokenizing and detokenizing, sampling in numpy with a per-request seeded generator, and agreement
as greedy-token match over the first tokens (a canary judged against stable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from tokenizers import Tokenizer

from bentos.errors import InvalidInput
from bentos.tasks.base import Codec, Feed, Limits, Task
from bentos.tasks.text import tokenizer_file

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit

AGREEMENT_TOKENS = 16  # greedy tokens compared between two versions on one prompt
MAX_STOPS, MAX_STOP_CHARS = 4, 64


Priority = Literal["low", "normal", "high"]


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """What a request's text must be (structured output): plain data, compiled by the version's decode loop
    (dataplane/decode/constraints.py)."""

    kind: Literal["json_schema", "json_object", "regex", "choice"]
    value: str  # the schema as JSON text, the regular expression, or the choices as a JSON list
    field: str = "response_format"  # the request's field that carried it: what a 422 names


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples; temperature 0 is greedy (the other values are then unused)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # write max_tokens whatever the model says (benchmarks; vLLM's name)
    priority: Priority = "normal"  # the class it asks for; the endpoint caps it by the caller's key
    output: OutputFormat | None = None  # structured output: the format its text must follow

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None) -> int:
    """The next token from one row of logits: argmax when greedy; else temperature, then top-k, then
    top-p (the smallest set of tokens whose probability reaches it), drawn with the request's generator."""
    if params.greedy or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.size:
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[:int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


@dataclass(frozen=True)
class GraphSpec:
    """The stored graph's shape, from the version's `preprocess.generation` metadata."""

    layers: int
    kv_heads: int
    head_dim: int
    kv_dtype: str
    eos_id: int | None
    context: int
    vocab: int

    @property
    def past_names(self) -> list[str]:
        return [f"past.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    @property
    def output_names(self) -> list[str]:
        return ["logits", *(f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value"))]

    def as_meta(self) -> dict[str, Any]:
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "kv_dtype": self.kv_dtype, "eos_id": self.eos_id, "context": self.context, "vocab": self.vocab}


def graph_spec(meta: dict[str, Any]) -> GraphSpec:
    try:
        return GraphSpec(int(meta["layers"]), int(meta["kv_heads"]), int(meta["head_dim"]),
                         str(meta.get("kv_dtype", "float32")),
                         None if meta.get("eos_id") is None else int(meta["eos_id"]), int(meta["context"]),
                         int(meta["vocab"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"preprocess.generation needs layers, kv_heads, head_dim, context and vocab: {exc}") from None


def left_padded(rows: list[list[int]], pad: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask and position_ids for prompts of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    pos = np.zeros((len(rows), width), np.int64)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = row
        mask[b, width - len(row):] = 1
        pos[b, width - len(row):] = np.arange(len(row))
    return ids, mask, pos


class GenerationCodec(Codec):
    agreement_name: ClassVar[str] = "greedy-token agreement"
    agreement_key: ClassVar[str] = "min_token_agreement"
    agreement_default: ClassVar[float] = 0.9

    """`preprocess`: tokenizer (file in the model dir), generation (GraphSpec's fields), chat_template
    (optional: "plain" joins messages as "role: content" lines)."""

    def __init__(self, signature: dict[str, Any], preprocess: dict[str, Any], model_dir: Path | None = None) -> None:
        super().__init__(signature, preprocess, model_dir)
        self.tokenizer_file = tokenizer_file(preprocess, model_dir)
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.spec = graph_spec(preprocess.get("generation") or {})

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.spec.kv_heads, 0, self.spec.head_dim)
        return {n: np.zeros(shape, self.spec.kv_dtype) for n in self.spec.past_names}

    def prefill_feed(self, prompts: list[list[int]]) -> Feed:
        ids, mask, pos = left_padded(prompts)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **self.empty_past(len(prompts))}

    # --- Codec: what the build side's gate and warm-up run (one forward over whole prompts) ---------
    def encode(self, items: list[Any]) -> Feed:
        return self.prefill_feed([self.tokenize(str(t)) or [self.spec.eos_id or 0] for t in items])

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        return list(outputs[0][:, -1, :])  # each prompt's next-token logits

    def decode(self, rows: list[Any], **options: Any) -> list[Any]:
        return [{"text": self.detokenize(list(r))} if not isinstance(r, dict) else r for r in rows]

    def agreement(self, a: Any, b: Any) -> float:
        """Greedy-token match over the first AGREEMENT_TOKENS: the share of positions where both wrote the
        same token (a position only one of them reached counts as a miss)."""
        a, b = list(a)[:AGREEMENT_TOKENS], list(b)[:AGREEMENT_TOKENS]
        n = max(len(a), len(b))
        return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b, strict=False)) / n

    def warmup_items(self) -> list[Any]:
        return ["A warm-up prompt before any traffic arrives."]

    def drift_features(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Prompts drift in length: tokens per prompt."""
        return {"tokens": np.array([len(self.tokenize(str(t))) for t in items], np.float64)}

    def output_features(self, rows: list[Any]) -> dict[str, np.ndarray]:
        return {}

    def oip_inputs(self) -> list[dict[str, Any]]:
        return [{"name": "text_input", "dtype": "object", "shape": [1]}]

    def oip_outputs(self) -> list[dict[str, Any]]:
        return [{"name": "text_output", "dtype": "object", "shape": [1]}]

    def check_prompt(self, ids: list[int], max_tokens: int, limits: Limits, field: str = "prompt") -> None:
        """A prompt this version can take: not empty, within limits.max_prompt_tokens, and with max_tokens
        within the model's context."""
        if not ids:
            raise InvalidInput(field, "must have at least one token")
        if len(ids) > limits.max_prompt_tokens:
            raise InvalidInput(field, f"{len(ids)} tokens, over {limits.max_prompt_tokens} "
                               "(limits.max_prompt_tokens)", {"max_prompt_tokens": limits.max_prompt_tokens})
        if len(ids) + max_tokens > self.spec.context:
            raise InvalidInput("max_tokens", f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) is over "
                               f"the model's context of {self.spec.context} tokens",
                               {"context": self.spec.context})


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """Chat messages as one prompt: "role: content" lines, then "assistant:" for the model to go on."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str = Field(pattern="^(system|user|assistant|developer|tool)$")
    content: str


def sampling_fields(limits: Limits, max_tokens_default: int | None = 64) -> dict[str, Any]:
    """The sampling fields every generation route takes, with this endpoint's limits: 422 names the field."""
    stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
    return {
        "max_tokens": (int if max_tokens_default else int | None, Field(max_tokens_default, ge=1,
                                                                          le=limits.max_new_tokens,
                                  description=f"New tokens, 1 to {limits.max_new_tokens} (limits.max_new_tokens)")),
        "temperature": (float, Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")),
        "top_p": (float, Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)),
        "top_k": (int, Field(0, ge=0, le=100_000, description="0 = no top-k cut")),
        "stop": (str | list[stop] | None, Field(None, description=f"Up to {MAX_STOPS} stop strings")),
        "seed": (int | None, Field(None, ge=0, le=2**63 - 1)),
        "stream": (bool, Field(False, description="Server-Sent Events, one per token")),
        "ignore_eos": (bool, Field(False, description="Go on past the end-of-text token up to max_tokens")),
        "priority": (Priority, Field("normal", description=(
            "Scheduling class: 'high' is admitted first and may pause lower streams (it needs a key with the "
            "'priority' scope; otherwise it counts as 'normal'); 'low' yields to both"))),
    }


class _Sampling(BaseModel):
    @field_validator("stop", check_fields=False)
    @classmethod
    def _stops(cls, value: Any) -> Any:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string has 1 to {MAX_STOP_CHARS} characters")
        return value


def params_of(body: BaseModel, output: OutputFormat | None = None) -> SamplingParams:
    stop = getattr(body, "stop", None)
    return SamplingParams(int(getattr(body, "max_tokens", 64) or 64), float(getattr(body, "temperature", 0) or 0),
                          float(getattr(body, "top_p", 1.0) or 1.0), int(getattr(body, "top_k", 0) or 0),
                          tuple([stop] if isinstance(stop, str) else stop or ()), getattr(body, "seed", None),
                          bool(getattr(body, "ignore_eos", False)), getattr(body, "priority", "normal"),
                          output or format_of(body))


# --- structured output: what a request's text must be ----------------------------------------------
MAX_REGEX_CHARS, MAX_CHOICES, MAX_CHOICE_CHARS = 2000, 64, 200
FORMAT_FIELDS = {
    "json_schema": (dict[str, Any] | None, Field(None, description="The text is one JSON value valid under this "
                                                 "JSON schema")),
    "regex": (str | None, Field(None, min_length=1, max_length=MAX_REGEX_CHARS, description="The text matches "
                                "this regular expression whole")),
    "choice": (list[Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]] | None,
               Field(None, min_length=1, max_length=MAX_CHOICES, description="The text is one of these")),
}


def format_of(body: BaseModel) -> OutputFormat | None:
    """The one format /v1/{name}/generate's body asks for (json_schema, regex or choice), or None."""
    given = [name for name in FORMAT_FIELDS if getattr(body, name, None) is not None]
    if len(given) > 1:
        raise InvalidInput(given[1], f"give one of json_schema, regex and choice, not {' and '.join(given)}")
    if not given:
        return None
    name = given[0]
    value = getattr(body, name)
    if name == "regex":
        return OutputFormat("regex", value, name)
    return OutputFormat("json_schema" if name == "json_schema" else "choice", json.dumps(value), name)


def generate_request(limits: Limits) -> type[BaseModel]:
    """POST /v1/{name}/generate and the playground: a prompt, the sampling fields and a format."""
    fields: dict[str, Any] = {"prompt": (str, Field(min_length=1, max_length=limits.max_chars, description=(
        f"The text to go on from, at most {limits.max_chars} characters"))), **FORMAT_FIELDS}
    model: type[BaseModel] = create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"), __base__=None,
                                          __doc__="Generate text", **fields, **sampling_fields(limits))
    return _checked(model)


def _checked(model: type[BaseModel]) -> type[BaseModel]:
    """`model` with the stop-string check."""
    checked: type[BaseModel] = create_model(model.__name__, __base__=(model, _Sampling))
    return checked


class TextGeneration(Task):
    name: ClassVar[str] = "text-generation"
    verb: ClassVar[str] = "generate"
    items_field: ClassVar[str] = "prompt"
    result_field: ClassVar[str] = "text"
    summary: ClassVar[str] = "Generate text, whole or streamed token by token"
    codec_class: ClassVar[type[Codec]] = GenerationCodec
    execution: ClassVar[str] = "decode"

    @classmethod
    def request_model(cls, limits: Limits, signature: dict[str, Any] | None) -> type[BaseModel]:
        return generate_request(limits)

    @classmethod
    def items(cls, body: BaseModel) -> list[Any]:
        return [body.prompt]  # type: ignore[attr-defined]

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "object", "properties": {"text": {"type": "string"}, "finish_reason": {"type": "string"}}}

    @classmethod
    def check_signature(cls, signature: dict[str, Any]) -> list[str]:
        names = {i["name"] for i in signature.get("inputs", [])}
        missing = [n for n in ("input_ids", "attention_mask", "position_ids", "past.0.key") if n not in names]
        return [f"a text-generation graph takes {', '.join(missing)}"] if missing else []

    @classmethod
    def playground(cls, kit: Kit) -> None:
        kit.chat()
