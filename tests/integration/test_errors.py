"""Inputs a security review sent that once got a 500: each now gets the right 4xx, and the server stays up."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import AUTH
from tests.servers import Served

pytestmark = pytest.mark.integration


def test_an_admin_body_over_the_limit_is_413(server: Served) -> None:
    big = b'{"reason": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = httpx.put(f"{server.url}/v1/admin/deployments/digits", content=big, headers=AUTH, timeout=60)
    assert r.status_code == 413 and "limit" in r.text, r.text
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: counted as it comes
    r = httpx.post(f"{server.url}/v1/admin/endpoints", content=chunks, headers=AUTH, timeout=60)
    assert r.status_code == 413, r.text


@pytest.mark.parametrize("tag", ["x:", ":", "a:b:c", "digits-mlp-fp32:", " ", "a" * 300, "../../etc"])
def test_a_malformed_tag_is_422_naming_the_field(server: Served, tag: str) -> None:
    body = {"versions": [{"tag": tag, "role": "stable", "weight": 100}], "reason": "malformed"}
    r = httpx.put(f"{server.url}/v1/admin/deployments/digits", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 422 and "tag" in r.json()["detail"], r.text
    r = httpx.post(f"{server.url}/v1/admin/rollouts/digits", json={"tag": tag, "reason": "x"}, headers=AUTH,
                   timeout=60)
    assert r.status_code in (404, 422) and "tag" in r.text, r.text


@pytest.mark.parametrize("limit", ["²", "١٢", "1e3", "-1", "", "0x10", "99999999999999999999"])
def test_a_query_number_that_is_not_ascii_digits_in_range_is_422(server: Served, limit: str) -> None:
    r = httpx.get(f"{server.url}/v1/admin/audit", params={"limit": limit}, headers=AUTH, timeout=60)
    assert r.status_code == 422 and "limit" in r.json()["detail"], r.text


def test_a_422_lists_at_most_20_errors_and_counts_the_rest(server: Served) -> None:
    rows = [["bad"] * 64 for _ in range(64)]
    r = httpx.post(f"{server.url}/v1/digits/predict", json={"inputs": rows}, timeout=60)
    assert r.status_code == 422
    body = r.json()
    assert len(body["errors"]) <= 20 and body["more_errors"] == 64 * 64 - len(body["errors"]), body.keys()
    assert len(r.content) < 8_000
    assert httpx.get(f"{server.url}/v1/health", timeout=30).status_code == 200


@pytest.mark.parametrize("pin", ["x:", "a:b:c", ":"])
def test_a_malformed_pin_is_a_4xx_on_both_protocols(server: Served, pin: str) -> None:
    row = {"inputs": [[0.0] * 64]}
    r = httpx.post(f"{server.url}/v1/digits/predict", json=row, headers={"X-Model-Version": pin}, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    oip = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    r = httpx.post(f"{server.url}/v2/models/digits/versions/{pin}/infer", json=oip, timeout=60)
    assert 400 <= r.status_code < 500, r.text


def test_a_malformed_or_overfull_multipart_upload_is_a_4xx_naming_the_field(server: Served) -> None:
    # Schemathesis found this one: multipart/form-data without a boundary.
    r = httpx.post(f"{server.url}/v1/digits/predict", content=b'{"inputs": null}',
                   headers={"Content-Type": "multipart/form-data"}, timeout=60)
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "content-type", r.text
    n = 64 + 1  # one file over SWITCHYARD_MAX_ROWS's default, which the test server keeps
    files = [("image", (f"{i}.png", b"not a png", "image/png")) for i in range(n)]
    r = httpx.post(f"{server.url}/v1/digits/predict", files=files, timeout=60)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "image", r.text
    assert r.json()["errors"][0]["limit"] == {"max_rows": n - 1}
    assert httpx.get(f"{server.url}/v1/health", timeout=30).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v1/digits/predict", {"inputs": [[0.0] * 64]}),
    ("/v2/models/digits/infer", {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                             "data": [0.0] * 64}]}),
])
def test_a_callers_deadline_travels_with_the_call_on_both_protocols(server: Served, path: str,
                                                                   body: dict[str, object]) -> None:
    """X-Request-Timeout: a bad value is a 4xx naming the header and its limit; one already past when the
    request reaches the queue is the deadline's 503; a roomy one is answered."""
    url = server.url + path
    for bad in ("soon", "0", "-1", "nan", "inf", "3601"):
        r = httpx.post(url, json=body, headers={"X-Request-Timeout": bad}, timeout=60)
        assert r.status_code in (400, 422) and "x-request-timeout" in r.text and "3600" in r.text, r.text
    r = httpx.post(url, json=body, headers={"X-Request-Timeout": "0.000001"}, timeout=60)
    assert r.status_code == 503 and "deadline" in r.text and r.headers["retry-after"] == "1", r.text
    assert httpx.post(url, json=body, headers={"X-Request-Timeout": "30"}, timeout=60).status_code == 200
