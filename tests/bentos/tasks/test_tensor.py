"""tensor: named inputs as nested arrays or base64 binary, named outputs, shape checks."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from bentos.errors import InvalidInput
from bentos.tasks import Limits
from bentos.tasks.base import tensor
from bentos.tasks.tensor import Tensor, TensorCodec

SIG = {"inputs": [tensor("a", "float32", ["batch", 3]), tensor("b", "int64", ["batch", 2])],
       "outputs": [tensor("sum", "float32", ["batch"]), tensor("count", "int64", ["batch"])]}
LIMITS = Limits(max_rows=8, max_chars=1, max_body_bytes=10_000, max_image_pixels=1)


def items(body: dict) -> list:  # type: ignore[type-arg]
    return Tensor.items(Tensor.request_model(LIMITS, None).model_validate(body))


def test_json_and_binary_inputs_make_the_same_rows() -> None:
    codec = TensorCodec(SIG, {})
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = base64.b64encode(a.astype("<f4").tobytes()).decode()
    as_json = items({"inputs": {"a": a.tolist(), "b": [[1, 2], [3, 4]]}})
    as_binary = items({"inputs": {"a": {"b64": raw, "dtype": "float32", "shape": [2, 3]}, "b": [[1, 2], [3, 4]]}})
    for rows in (as_json, as_binary):
        codec.check(rows, LIMITS)
        feed = codec.encode(rows)
        np.testing.assert_array_equal(feed["a"], a)
        assert feed["b"].dtype == np.int64


def test_outputs_come_back_by_name_batch_first() -> None:
    codec = TensorCodec(SIG, {})
    rows = codec.split({}, [np.array([1.5, 2.5], np.float32), np.array([3, 4])])
    body = Tensor.render(codec, rows, {})
    assert body["outputs"]["sum"].tolist() == [1.5, 2.5] and body["outputs"]["count"].tolist() == [3, 4]
    assert codec.agreement(rows[0], rows[0]) == 1.0
    assert codec.agreement(rows[0], {"sum": np.float32(0), "count": np.int64(0)}) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("body", "needle"), [
    ({"inputs": {"a": [[1.0, 2.0, 3.0]]}}, "inputs.b: missing"),
    ({"inputs": {"a": [[1.0, 2.0]], "b": [[1, 2]]}}, r"inputs.a: rows of shape \[2\] do not fit the model's \[3\]"),
    ({"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1.5, 2.0]]}}, "inputs.b: the model takes int64"),
    ({"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1, 2]], "c": [[1]]}}, "inputs.c: unknown input"),
])
def test_bad_tensors_name_the_input(body: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match=needle):
        TensorCodec(SIG, {}).check(items(body), LIMITS)


def test_ragged_or_mismatched_batches_are_refused() -> None:
    with pytest.raises(InvalidInput, match="same number of rows"):
        items({"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1, 2], [3, 4]]}})
    with pytest.raises(InvalidInput, match="rectangular"):
        items({"inputs": {"a": [[1.0], [1.0, 2.0]], "b": [[1, 2], [3, 4]]}})
    with pytest.raises(InvalidInput, match="bytes do not make"):
        items({"inputs": {"a": {"b64": base64.b64encode(b"abc").decode(), "dtype": "float32", "shape": [1, 3]}}})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused_naming_the_row_unless_the_signature_allows_them(bad: float) -> None:
    a = np.ones((3, 3), np.float32)
    a[2, 1] = bad
    raw = base64.b64encode(a.astype("<f4").tobytes()).decode()
    for body in ({"inputs": {"a": a.tolist(), "b": [[1, 2]] * 3}},
                 {"inputs": {"a": {"b64": raw, "dtype": "float32", "shape": [3, 3]}, "b": [[1, 2]] * 3}}):
        with pytest.raises(InvalidInput, match="values must be finite") as caught:
            TensorCodec(SIG, {}).check(items(body), LIMITS)
        assert caught.value.field == "inputs.a.2"
        TensorCodec({**SIG, "allow_non_finite": True}, {}).check(items(body), LIMITS)
