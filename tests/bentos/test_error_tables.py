"""Every error kind through every protocol's table, and every error class of one kind.

A kind added without a row in some table, or an error class below the adapters that is not a
ServingError, fails here rather than as a 500 in production.
"""

from __future__ import annotations

import inspect

import orjson
import pytest

import bentos.errors as errors
from bentos.api.problems import GRPC, OIP_HTTP, OPENAI, REST, SSE_AFTER_START, TABLES, oip_problem, problem
from bentos.errors import KINDS, InvalidFields, Kind, ServingError

GRPC_CODES = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND",
              "ALREADY_EXISTS", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL"}


@pytest.mark.parametrize("protocol", sorted(TABLES))
def test_every_kind_has_a_row_in_every_protocols_table(protocol: str) -> None:
    assert set(TABLES[protocol]) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reads_sensibly_on_every_wire(kind: Kind) -> None:
    status = REST[kind]
    assert 400 <= status < 600 and OIP_HTTP[kind] in (status, 400)
    assert (status >= 500) == (kind in ("overloaded", "deadline", "unavailable", "model_failure"))
    assert OPENAI[kind][0] == (400 if kind in ("malformed", "invalid") else status)
    assert GRPC[kind] in GRPC_CODES
    # After a stream's first byte only failures of the server or the stream itself can happen.
    assert (SSE_AFTER_START[kind] is None) == (status < 500)


def serving_error_classes() -> list[type[ServingError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass)
            if issubclass(c, ServingError) and c.__module__ == errors.__name__]


def test_every_error_class_has_a_kind_from_the_list() -> None:
    classes = serving_error_classes()
    assert len(classes) >= 18
    assert {c.kind for c in classes} <= set(KINDS)


@pytest.mark.parametrize("exc, status, headers", [
    # the statuses and Retry-After headers these errors had before they had kinds
    (errors.QueueFull("batch-x: 64 requests already queued (SWITCHYARD_MAX_QUEUE)"), 503, {"Retry-After": "1"}),
    (errors.DeadlineExceeded("batch-x: deadline passed while queued"), 503, {"Retry-After": "1"}),
    (errors.NoDeployment("endpoint digits has no deployed model yet"), 503, {"Retry-After": "5"}),
    (errors.ModelFailure("m:1 could not answer this request"), 500, {}),
    (errors.UnknownPin("X-Model-Version 'x' matches no live version"), 404, {}),
    (errors.TooBusy("64 requests in flight"), 503, {"Retry-After": "1"}),
    (errors.RateLimited("API key k: over its rate", 0.2), 429, {"Retry-After": "1"}),
    (errors.Unauthorized("an API key is required"), 401, {"WWW-Authenticate": 'Bearer realm="switchyard"'}),
    (errors.BodyTooLarge(1024, "limits.max_body_bytes"), 413, {}),
    (errors.InvalidInput("texts", "at most 4 texts", {"max_rows": 4}), 422, {}),
    (ServingError("content-type: missing boundary", field="content-type"), 400, {}),
])
def test_rest_answers_are_what_they_were(exc: ServingError, status: int, headers: dict[str, str]) -> None:
    response = problem(exc)
    body = orjson.loads(bytes(response.body))
    assert response.status_code == status and body["detail"] == exc.message
    assert {k: response.headers[k] for k in headers} == headers
    oip = oip_problem(exc)
    assert oip.status_code == (400 if status == 422 else status) and orjson.loads(bytes(oip.body))["error"]


def test_the_overloaded_and_failure_messages_keep_their_wording() -> None:
    assert errors.QueueFull("full").message == "overloaded, retry later: full"
    assert errors.ModelFailure("m:1 broke").message == "model failure: m:1 broke"


def test_many_field_errors_answer_with_the_first_twenty_and_a_count() -> None:
    fields = [{"field": f"inputs.{i}", "message": "not a number", "type": "float_parsing"} for i in range(25)]
    body = orjson.loads(bytes(problem(InvalidFields(fields)).body))
    assert body["detail"] == "inputs.0: not a number (and 24 more)"
    assert len(body["errors"]) == 20 and body["more_errors"] == 5


def test_the_data_planes_errors_are_the_one_family() -> None:
    """The errors the request path raises are these classes, not look-alikes of their own."""
    from bentos.dataplane import batching, endpoint, routing

    assert routing.UnknownPin is errors.UnknownPin
    assert (batching.QueueFull, batching.DeadlineExceeded) == (errors.QueueFull, errors.DeadlineExceeded)
    assert (endpoint.ModelFailure, endpoint.NoDeployment) == (errors.ModelFailure, errors.NoDeployment)
