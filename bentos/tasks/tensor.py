"""tensor: named inputs in, named outputs out, with dtypes and shapes from the ONNX graph.

A request sends every input batched along its first axis, as a JSON nested array or, for
large tensors, as base64 of little-endian bytes with its dtype and shape. Agreement is
1 - relative L2 distance over every output.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bentos.errors import InvalidInput
from bentos.tasks.base import NON_FINITE, Codec, Feed, Limits, Task, row_shape

if TYPE_CHECKING:
    from bentos.tasks.playground_kit import Kit

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


class BinaryTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    b64: str = Field(min_length=1, description="base64 of the tensor's little-endian bytes, C order")
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[int] = Field(min_length=1, max_length=8)


def _fits(shape: tuple[int, ...], spec: list[int | str]) -> bool:
    return len(shape) == len(spec) and all(isinstance(d, str) or int(d) in (-1, s) for s, d in zip(shape, spec,
                                                                                                     strict=True))


def _check_column(name: str, spec: dict[str, Any], rows: list[Any], allow_non_finite: bool) -> None:
    try:  # the common case in one pass: a regular batch of numbers
        column = np.asarray(rows)
        regular = column.dtype.kind in "fiub"
    except (ValueError, TypeError, OverflowError):
        column, regular = None, False
    if not regular:
        for i, row in enumerate(rows):  # name the row that is not
            try:
                kind = np.asarray(row).dtype.kind
            except (ValueError, TypeError, OverflowError):
                kind = "O"
            if kind not in "fiub":
                raise InvalidInput(f"inputs.{name}.{i}", "not a regular array of numbers")
        raise InvalidInput(f"inputs.{name}", "rows of different shapes; every row needs the model's row shape "
                           f"{row_shape(spec)}", {"shape": spec["shape"]})
    assert column is not None
    shape = tuple(column.shape[1:])
    if not _fits(shape, row_shape(spec)):
        raise InvalidInput(f"inputs.{name}", f"rows of shape {list(shape)} do not fit the model's "
                           f"{row_shape(spec)}", {"shape": spec["shape"]})
    if column.dtype.kind == "f" and not allow_non_finite and not np.isfinite(column).all():
        row = int(np.flatnonzero(~np.isfinite(column.reshape(len(column), -1)).all(axis=1))[0])
        raise InvalidInput(f"inputs.{name}.{row}", NON_FINITE)
    target = np.dtype(spec["dtype"])
    if target.kind in "iub" and column.dtype.kind == "f":
        raise InvalidInput(f"inputs.{name}", f"the model takes {spec['dtype']}; got floating-point values")
    if target.kind in "iu" and column.size:
        info = np.iinfo(target)
        if column.min() < info.min or column.max() > info.max:
            raise InvalidInput(f"inputs.{name}", f"values must be within {target} ({info.min} to {info.max})",
                               {"ge": int(info.min), "le": int(info.max)})


class TensorCodec(Codec):
    agreement_name: ClassVar[str] = "1 - relative L2"
    agreement_key: ClassVar[str] = "max_rel_l2"
    agreement_default: ClassVar[float] = 0.01

    def agreement_floor(self) -> float:
        """The gate bounds the relative L2 distance; agreement is one minus it."""
        return 1.0 - float(self.gate.get(self.agreement_key, self.agreement_default))

    def check(self, items: list[Any], limits: Limits) -> None:
        """Every row of every input: a regular array of numbers, of the model's row shape and within its
        dtype's range, so that nothing the batch thread does with them can fail on the caller's data."""
        if not items:
            raise InvalidInput("inputs", "at least one row")
        if len(items) > limits.max_rows:
            raise InvalidInput("inputs", f"at most {limits.max_rows} rows (limits.max_rows), got {len(items)}",
                               {"max_rows": limits.max_rows})
        want = {i["name"]: i for i in self.inputs}
        for i, item in enumerate(items):
            for name in item:
                if name not in want:
                    raise InvalidInput(f"inputs.{name}", f"unknown input; the model takes {', '.join(want)}")
            for name in want:
                if name not in item:
                    where = f"inputs.{name}" if i == 0 else f"inputs.{name}.{i}"
                    raise InvalidInput(where, f"missing; the model takes {', '.join(want)}")
        for name, spec in want.items():
            _check_column(name, spec, [item[name] for item in items], self.allow_non_finite)

    def bucket(self, items: list[Any]) -> int:
        # Rows of different shapes cannot share a batch; spread shape classes far apart.
        key = repr(sorted((k, np.shape(v)) for k, v in items[0].items())).encode()
        return zlib.crc32(key) * 4

    def encode(self, items: list[Any]) -> Feed:
        return {spec["name"]: np.stack([np.asarray(item[spec["name"]]) for item in items]).astype(spec["dtype"])
                for spec in self.inputs}

    def split(self, feed: Feed, outputs: list[np.ndarray]) -> list[Any]:
        names = self.output_names
        return [dict(zip(names, rows, strict=True)) for rows in zip(*outputs, strict=True)]

    def decode(self, rows: list[Any], **options: Any) -> list[Any]:
        return rows  # rendered column-wise by the task

    def agreement(self, a: Any, b: Any) -> float:
        num = sum(float(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)) for k in a)
        den = sum(float(np.sum(np.asarray(a[k], np.float64) ** 2)) for k in a)
        return max(0.0, 1.0 - math.sqrt(num) / (math.sqrt(den) + 1e-12))

    def warmup_items(self) -> list[Any]:
        return [{i["name"]: np.zeros([1 if isinstance(d, str) else int(d) for d in row_shape(i)], i["dtype"])
                 for i in self.inputs}]

    def from_oip(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        n = len(next(iter(tensors.values())))
        return [{name: value[i] for name, value in tensors.items()} for i in range(n)]

    def to_oip(self, rows: list[Any]) -> dict[str, np.ndarray]:
        return {name: np.stack([r[name] for r in rows]) for name in self.output_names}


def _array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, BinaryTensor):
        try:
            raw = base64.b64decode(value.b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"inputs.{name}.b64", "not valid base64") from None
        dtype = np.dtype(value.dtype).newbyteorder("<")
        if len(raw) != math.prod(value.shape) * dtype.itemsize:
            raise InvalidInput(f"inputs.{name}.b64", f"{len(raw)} bytes do not make a {value.dtype} tensor of "
                               f"shape {value.shape}")
        return np.frombuffer(raw, dtype).reshape(value.shape)
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InvalidInput(f"inputs.{name}", "not a rectangular nested array") from None
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        raise InvalidInput(f"inputs.{name}", "must be a nested array of numbers, batch first")
    return arr


class Tensor(Task):
    name: ClassVar[str] = "tensor"
    verb: ClassVar[str] = "infer"
    items_field: ClassVar[str] = "inputs"
    result_field: ClassVar[str] = "outputs"
    summary: ClassVar[str] = "Run a graph on named input tensors"
    codec_class: ClassVar[type[Codec]] = TensorCodec

    @classmethod
    def request_model(cls, limits: Limits, signature: dict[str, Any] | None) -> type[BaseModel]:
        class InferRequest(BaseModel):
            model_config = ConfigDict(extra="forbid")
            inputs: dict[str, list[Any] | BinaryTensor] = Field(
                min_length=1, max_length=64,
                description="Each input by name, batched along its first axis: a nested array, or "
                            '{"b64", "dtype", "shape"} for little-endian binary')

        return InferRequest

    @classmethod
    def items(cls, body: BaseModel) -> list[Any]:
        arrays = {name: _array(name, value) for name, value in getattr(body, "inputs").items()}  # noqa: B009
        sizes = {name: len(a) for name, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise InvalidInput("inputs", f"every input needs the same number of rows (first axis), got {sizes}")
        n = next(iter(sizes.values()))
        if n == 0:
            raise InvalidInput("inputs", "at least 1 row")
        return [{name: a[i] for name, a in arrays.items()} for i in range(n)]

    @classmethod
    def render(cls, codec: Codec, rows: list[Any], options: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": {name: np.ascontiguousarray(np.stack([r[name] for r in rows])) for name in rows[0]}}

    @classmethod
    def result_schema(cls) -> dict[str, Any]:
        return {"type": "object", "description": "each output by name, batched along its first axis",
                "additionalProperties": {"type": "array"}}

    @classmethod
    def playground(cls, kit: Kit) -> None:
        import json

        gr = kit.gr
        body = gr.Code(language="json", label='Inputs: {"name": [[...]], ...}, batch first',
                       value=json.dumps(kit.warmup_body()))
        out = gr.JSON(label="Outputs")

        def to_items(value: str) -> list[Any]:
            try:
                parsed = cls.request_model(kit.limits(), None).model_validate({"inputs": json.loads(value or "{}")})
            except ValueError as exc:
                raise ValueError(f"the inputs are not valid: {str(exc).splitlines()[-1]}") from None
            return cls.items(parsed)

        def render(items: list[Any], results: list[Any]) -> tuple[Any, ...]:
            return ({name: [np.asarray(r[name]).tolist() for r in results] for name in results[0]},)

        kit.panel([body], to_items, [out], render)
