"""What every task type provides: the request contract, and a codec per model version.

A task type is one module in `bentos/tasks/` (serving, no torch) and one in `models/tasks/`
(build). The serving half owns the request and response models, encode and decode, the
batching bucket, the shadow agreement measure, the warm-up input, the Open Inference
Protocol mapping and the playground widget.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from bentos.errors import InvalidInput

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit

Feed = dict[str, np.ndarray]

# Open Inference Protocol datatypes <-> numpy.
OIP_DTYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
    "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_OIP = {v: k for k, v in OIP_DTYPES.items()}


@functools.lru_cache(maxsize=64)  # once per dtype name: np.dtype() costs more than the rest of a small answer
def oip_datatype(dtype: str) -> str:
    return NUMPY_TO_OIP.get(np.dtype(dtype).name if dtype != "string" else "object", "BYTES")


class Limits(BaseModel):
    """An endpoint's effective input limits (its config, else the server's defaults)."""

    max_rows: int
    max_chars: int
    max_body_bytes: int
    max_image_pixels: int
    max_request_pixels: int = 32_000_000
    body_timeout_s: float = 30.0
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    max_streams: int = 32
    max_waiting: int = 256
    kv_cache_bytes: int = 256 * 1024 * 1024
    prefix_cache_share: float = 0.25
    shared_prefixes: tuple[str, ...] = ()
    speculate_tokens: int = 0  # prompt-lookup speculation (EndpointConfig.speculation): 0 is off
    speculate_ngram: int = 3
    speculate_min_acceptance: float = 0.3
    speculate_pass_tokens: int = 8


def length_bucket(token_length: int) -> int:
    """Power-of-two length classes: inputs within 2x of each other batch together."""
    return max(0, math.ceil(math.log2(max(1, token_length))))


def tensor(name: str, dtype: str, shape: list[int | str]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def row_shape(spec: dict[str, Any]) -> list[int | str]:
    """A tensor's shape without its leading batch axis."""
    return list(spec["shape"][1:])


DRIFT_ELEMENTS = 64  # inputs up to this many values a row are watched element by element


class Codec(ABC):
    """One stored version's pre- and post-processing, built from its metadata."""

    # Set for tasks whose rows are one float vector (classifiers, embeddings): the v2 output's name.
    oip_output: ClassVar[str | None] = None
    # How two versions' `agreement` is judged: the accuracy gate's threshold on the same measure, by the name
    # the build side stores it under (metadata gate.thresholds) and its default there (models/cli.py).
    agreement_name: ClassVar[str] = "top-1 agreement"
    agreement_key: ClassVar[str] = "min_agreement"
    agreement_default: ClassVar[float] = 0.99

    def __init__(self, signature: dict[str, Any], preprocess: dict[str, Any], model_dir: Path | None = None) -> None:
        self.signature = signature
        self.preprocess = preprocess
        self.model_dir = model_dir
        self.gate: dict[str, float] = {}  # the thresholds this version's accuracy gate used (Task.codec)

    def agreement_floor(self) -> float:
        """The least `agreement` this version's gate let through against fp32: two versions that agree at least
        this well are as close as their gates asked."""
        return float(self.gate.get(self.agreement_key, self.agreement_default))

    # --- what the build side stores ------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        return self.signature

    def preprocess_config(self) -> dict[str, Any]:
        return self.preprocess

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.signature["inputs"])

    @property
    def allow_non_finite(self) -> bool:
        """NaN and Infinity reach the model only where its signature says it takes them (import
        --allow-non-finite): elsewhere they are a caller's mistake that a model answers with NaN."""
        return bool(self.signature.get("allow_non_finite", False))

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.signature["outputs"])

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    # --- the request path ------------------------------------------------------------------
    def check(self, items: list[Any], limits: Limits) -> None:  # noqa: B027 - most schemas check it all
        """Raise InvalidInput (422) for items this version cannot take, before they are queued."""

    def bucket(self, items: list[Any]) -> int:
        """Items with equal buckets batch together (length classes, shapes)."""
        return 0

    # --- drift: what is watched ---------------------------------------------------------------
    def drift_features(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Per-item numbers whose distribution is watched for input drift: each element of a small input
        (up to 64 values a row, e.g. 8x8 pixels), or a row's mean and spread for larger ones."""
        out: dict[str, np.ndarray] = {}
        for name, arr in self.encode(items).items():
            if arr.dtype == object:
                continue
            rows = arr.reshape(len(items), -1).astype(np.float64)
            if rows.shape[1] <= DRIFT_ELEMENTS:
                out.update({f"{name}[{i}]": rows[:, i] for i in range(rows.shape[1])})
            else:
                out[f"{name}.mean"], out[f"{name}.std"] = rows.mean(axis=1), rows.std(axis=1)
        return out

    def predicted_classes(self, rows: list[Any]) -> tuple[np.ndarray, int] | None:
        """The class each result row predicts, and how many classes there are; None when not a classifier."""
        return None

    def output_features(self, rows: list[Any]) -> dict[str, np.ndarray]:
        """Per-row numbers of the answers watched for drift where there are no classes (embeddings)."""
        return {}

    @abstractmethod
    def encode(self, items: list[Any]) -> Feed: ...

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        """One result row per item, from the graph's outputs (in `output_names` order)."""
        return list(outputs[0])

    @abstractmethod
    def decode(self, rows: list[Any], **options: Any) -> list[Any]:
        """Result rows as JSON-ready response items; `options` come from `Task.options`."""

    @abstractmethod
    def agreement(self, a: Any, b: Any) -> float:
        """How far two versions agree on one result row, in [0, 1] (shadow comparison)."""

    @abstractmethod
    def warmup_items(self) -> list[Any]:
        """A representative input, run before a version takes traffic."""

    # --- Open Inference Protocol -------------------------------------------------------------
    def oip_inputs(self) -> list[dict[str, Any]]:
        """The tensors a v2 client sends (name, dtype, shape with -1 for free axes)."""
        return self.inputs

    def oip_outputs(self) -> list[dict[str, Any]]:
        if self.oip_output is None:
            return self.outputs
        return [{"name": self.oip_output, "dtype": "float32", "shape": ["batch", "dim"]}]

    def from_oip(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        """Request items from v2 input tensors, already checked against `oip_inputs`."""
        (spec,) = self.oip_inputs()
        return list(tensors[spec["name"]])

    def to_oip(self, rows: list[Any]) -> dict[str, np.ndarray]:
        if self.oip_output is None:
            return {self.outputs[0]["name"]: np.stack(rows)}
        return {self.oip_output: np.stack(rows).astype(np.float32)}


class Task(ABC):
    """A task type's serving half: the contract every endpoint of this type speaks."""

    name: ClassVar[str]
    verb: ClassVar[str]  # POST /v1/{endpoint}/{verb}
    items_field: ClassVar[str]  # the request's list of inputs
    result_field: ClassVar[str]  # the response's list of results
    summary: ClassVar[str]
    codec_class: ClassVar[type[Codec]]
    # "forward": one pass per batch (AdaptiveBatcher); "decode": token by token (the decode loop).
    execution: ClassVar[str] = "forward"

    @classmethod
    def classifies(cls) -> bool:
        """Whether its answers name classes (what a rollout's `drift` check compares)."""
        return cls.codec_class.predicted_classes is not Codec.predicted_classes

    @classmethod
    @abstractmethod
    def request_model(cls, limits: Limits, signature: dict[str, Any] | None) -> type[BaseModel]:
        """The request body, with this endpoint's limits baked in; `signature` is its declared one."""

    @classmethod
    @abstractmethod
    def result_schema(cls) -> dict[str, Any]:
        """JSON schema of one result item (for the OpenAPI document)."""

    @classmethod
    def items(cls, body: BaseModel) -> list[Any]:
        return list(getattr(body, cls.items_field))

    @classmethod
    def render(cls, codec: Codec, rows: list[Any], options: dict[str, Any]) -> dict[str, Any]:
        """The response body's results part."""
        return {cls.result_field: codec.decode(rows, **options)}

    @classmethod
    def options(cls, body: BaseModel) -> dict[str, Any]:
        """Per-request decode options (top_k, say)."""
        return {}

    @classmethod
    def check_signature(cls, signature: dict[str, Any]) -> list[str]:
        """Why a model with this signature cannot serve this task; empty when it can."""
        return [] if signature.get("inputs") and signature.get("outputs") else ["no inputs or outputs recorded"]

    @classmethod
    def codec(cls, metadata: dict[str, Any], model_dir: Path | None) -> Codec:
        codec = cls.codec_class(metadata["schema"], metadata.get("preprocess") or {}, model_dir)
        thresholds = (metadata.get("gate") or {}).get("thresholds") or {}
        codec.gate = {k: float(v) for k, v in thresholds.items() if isinstance(v, int | float)}
        return codec

    @classmethod
    @abstractmethod
    def playground(cls, kit: Kit) -> None:
        """Build this task's widget inside the current Gradio context."""


NON_FINITE = "values must be finite numbers: NaN and Infinity are refused (a model imported with " \
             "--allow-non-finite takes them)"


def check_rows(items: list[Any], field: str, count: int, low: float | None, high: float | None,
               allow_non_finite: bool = False) -> None:
    """Each item flattens to `count` numbers within [low, high], finite unless `allow_non_finite`;
    InvalidInput names the first bad one."""
    if not items:
        return
    try:  # the common case in one vectorized pass: a rectangular batch that is all good
        whole = np.asarray(items, dtype=np.float64).reshape(len(items), -1)
        if whole.shape[1] == count and (allow_non_finite or np.isfinite(whole).all()) and (
                low is None or whole.min() >= low) and (high is None or whole.max() <= high):
            return
    except (ValueError, TypeError):  # ragged, or not numbers: the loop below names the row
        pass
    for i, item in enumerate(items):
        try:
            arr = np.asarray(item, dtype=np.float64) if not isinstance(item, np.ndarray) else item
        except (ValueError, TypeError, OverflowError):
            raise InvalidInput(f"{field}.{i}", f"expected {count} numbers in a regular array",
                               {"values": count}) from None
        if arr.size != count:
            raise InvalidInput(f"{field}.{i}", f"expected {count} values, got {arr.size}", {"values": count})
        if not allow_non_finite and not np.isfinite(arr).all():
            raise InvalidInput(f"{field}.{i}", NON_FINITE)
        if low is not None and float(arr.min()) < low:
            raise InvalidInput(f"{field}.{i}", f"values must be greater than or equal to {low:g}", {"ge": low})
        if high is not None and float(arr.max()) > high:
            raise InvalidInput(f"{field}.{i}", f"values must be less than or equal to {high:g}", {"le": high})
