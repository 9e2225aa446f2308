"""Open Inference Protocol tensors, for both of its wires: JSON `data` or the binary extension over HTTP,
typed `contents` or `raw_input_contents` over gRPC.

Both wires share one raw layout (little-endian; BYTES as a 4-byte length then the bytes, per element) and
one set of checks against the model's declared inputs, so they live here once: a tensor that one wire
refuses, the other refuses with the same words.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bentos.errors import InvalidInput, NoDeployment, ServingError
from bentos.tasks.base import OIP_DTYPES, Codec, oip_datatype

if TYPE_CHECKING:
    from bentos.dataplane.endpoint import Endpoint

MAX_INPUTS = 64  # tensors per request
MAX_DIMS = 8  # axes per tensor


class OipError(ServingError):
    """A request the model cannot take as sent: 400 over HTTP, INVALID_ARGUMENT over gRPC."""

    kind = "invalid"


def _shape(spec: dict[str, Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]


def tensor_meta(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model's tensors as metadata: name, datatype and shape (-1 for a free axis)."""
    return [{"name": s["name"], "datatype": oip_datatype(s["dtype"]), "shape": _shape(s)} for s in specs]


def check_tensor(name: str, datatype: str, shape: list[int], spec: dict[str, Any]) -> str:
    """The model's datatype for this input, once `datatype` and `shape` fit its declaration."""
    want = oip_datatype(spec["dtype"])
    if datatype != want:
        raise OipError(f"input {name}: datatype {datatype} does not match the model's {want}", field=name)
    expected = _shape(spec)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise OipError(f"input {name}: shape {shape[:MAX_DIMS + 1]} must be at most {MAX_DIMS} sizes, none "
                       "negative", field=name, limit={"max_dims": MAX_DIMS})
    if len(shape) != len(expected) or any(e not in (-1, g) for e, g in zip(expected, shape, strict=True)):
        raise OipError(f"input {name}: shape {shape} does not fit the model's {expected}", field=name)
    return want


def bytes_elements(raw: bytes, count: int, name: str) -> np.ndarray:
    """BYTES in the raw layout: each element a 4-byte little-endian length, then the bytes."""
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise OipError(f"input {name}: BYTES data ends early", field=name)
        (n,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + n > len(raw):
            raise OipError(f"input {name}: a BYTES element of {n} bytes runs past its data", field=name)
        out.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    if offset != len(raw):
        raise OipError(f"input {name}: {len(raw) - offset} bytes left over after {count} BYTES elements", field=name)
    return np.array(out, dtype=object)


def from_raw(raw: bytes, want: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from its raw bytes (HTTP's binary extension, gRPC's raw_input_contents)."""
    count = math.prod(shape)
    if want == "BYTES":
        return bytes_elements(raw, count, name).reshape(shape)
    dtype = np.dtype(OIP_DTYPES[want]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise OipError(f"input {name}: {len(raw)} bytes do not make {want} of shape {shape} "
                       f"({count * dtype.itemsize} bytes)", field=name)
    return np.frombuffer(raw, dtype).reshape(shape)


def from_values(values: Any, want: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from a list of values (HTTP's JSON `data`, gRPC's typed `contents`)."""
    try:
        arr = np.array(values, dtype=object if want == "BYTES" else OIP_DTYPES[want])
    except (TypeError, ValueError, OverflowError):
        raise OipError(f"input {name}: data is not {want}", field=name) from None
    if arr.size != math.prod(shape):
        raise OipError(f"input {name}: {arr.size} values do not fill shape {shape}", field=name)
    return arr.reshape(shape)


def served_codec(endpoint: Endpoint) -> Codec:
    """The codec of the endpoint's stable version: what its tensors are, for metadata and decoding."""
    codec = endpoint.codec_of(endpoint.spec.stable.tag) if endpoint.spec is not None else None
    if codec is None:
        raise NoDeployment(f"model {endpoint.name} has no deployed version yet")
    return codec


def items_of(codec: Codec, tensors: dict[str, np.ndarray], max_rows: int) -> list[Any]:
    """Request items from checked tensors, within the endpoint's row limit."""
    items = codec.from_oip(tensors)
    if len(items) > max_rows:
        raise InvalidInput("inputs", f"at most {max_rows} rows (limits.max_rows)", {"max_rows": max_rows})
    return items


def check_names(names: list[str], codec: Codec) -> dict[str, dict[str, Any]]:
    """The model's input declarations by name, once `names` are exactly its inputs."""
    specs = {s["name"]: s for s in codec.oip_inputs()}
    if len(names) > MAX_INPUTS:
        raise OipError(f"inputs: at most {MAX_INPUTS} tensors", field="inputs", limit={"max_inputs": MAX_INPUTS})
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise OipError(f"input {twice!r} is sent more than once", field="inputs")
    for name in names:
        if name not in specs:
            raise OipError(f"unknown input {name!r}; the model takes {', '.join(specs)}", field="inputs")
    missing = [n for n in specs if n not in names]
    if missing:
        raise OipError(f"missing input {missing[0]!r}; the model takes {', '.join(specs)}", field="inputs")
    return specs


def check_batch(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = {len(a) if a.ndim else 0 for a in tensors.values()}
    if len(batch) != 1 or 0 in batch:
        raise OipError("every input needs the same, non-zero first dimension (the batch)", field="inputs")
    return dict(tensors)


def raw_of(arr: np.ndarray) -> bytes:
    """A tensor in the raw layout."""
    if arr.dtype == object:
        parts = []
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()


def chosen(tensors: Mapping[str, np.ndarray], wanted: Iterable[str] | None) -> dict[str, np.ndarray]:
    """The outputs a request asked for, in the model's order; all of them when it named none."""
    if wanted is None:
        return dict(tensors)
    names = list(wanted)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise OipError(f"unknown output {unknown[0]!r}; outputs: {', '.join(tensors)}", field="outputs")
    return {n: a for n, a in tensors.items() if n in names}
