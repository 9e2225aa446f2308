"""Request ids and the payload log on a real `bentoml serve`: 10,000 requests through the log keep it
rotated and within its bound, a redacting endpoint leaves no raw input on disk, and an operator reads
the newest entries back by request id."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import AUTH, TOKEN, console_on_loopback, serve_with
from tests.servers import Served, free_port, wrk_until

pytestmark = pytest.mark.integration
BOUND_MB, FILE_MB = 0.5, 0.05
ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34


@pytest.fixture(scope="module")
def logged(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    where = tmp_path_factory.mktemp("payloads")
    setting = {"sample": 1.0, "dir": str(where), "max_file_mb": FILE_MB, "max_total_mb": BOUND_MB}
    for served in serve_with(tags, tmp_path_factory.mktemp("state-logged"), 1, payload_log=json.dumps(setting),
                             grpc_port=str(free_port())):
        yield served, where


def test_every_answer_carries_a_request_id_and_a_callers_own_is_kept(logged: tuple[Served, Path]) -> None:
    served, _ = logged
    with httpx.Client(base_url=served.url, timeout=30) as c:
        mine = c.post("/v1/digits/predict", json={"inputs": [ROW]}, headers={"X-Request-ID": "trace-me-1"})
        made = c.post("/v1/digits/predict", json={"inputs": [ROW]}, headers={"X-Request-ID": "bad id; <script>"})
        failed = c.post("/v1/digits/predict", json={"inputs": [[99.0] * 64]})
        admin = c.get("/v1/admin/whoami", headers=AUTH)
    assert mine.headers["x-request-id"] == "trace-me-1"
    assert len(made.headers["x-request-id"]) == 32  # replaced, not echoed
    assert failed.status_code == 422 and failed.json()["request_id"] == failed.headers["x-request-id"]
    assert admin.headers["x-request-id"]


def test_payload_log_rotates_stays_bounded_and_is_read_back(logged: tuple[Served, Path]) -> None:
    served, where = logged
    body = json.dumps({"inputs": [ROW]})
    # Enough entries to rotate many times over (the bound holds about 2,000), however long that takes here.
    requests, non2xx, _ = wrk_until(f"{served.url}/v1/digits/predict", [body], 16, 6_000, served.proc.pid)
    assert non2xx == 0
    r = httpx.post(f"{served.url}/v1/digits/predict", json={"inputs": [ROW]}, headers={"X-Request-ID": "find-me"},
                   timeout=30)
    files = list(where.glob("payloads-*.jsonl"))
    total = sum(p.stat().st_size for p in files)
    print(f"{requests} requests; {len(files)} files, {total / 2**20:.2f} MB on disk (bound {BOUND_MB} MB)")
    assert len(files) > 2 and total <= BOUND_MB * 2**20 + 4096
    newest = []
    for _ in range(50):  # the writer thread flushes within moments
        newest = httpx.get(f"{served.url}/v1/admin/payloads", params={"endpoint": "digits", "limit": 3},
                           headers=AUTH, timeout=30).json()
        if newest and newest[0]["request_id"] == "find-me":
            break
    assert newest[0]["request_id"] == "find-me" and newest[0]["version"] == r.headers["x-model-version"]
    assert newest[0]["inputs"] == [ROW] and newest[0]["outputs"][0]["label"] == r.json()["predictions"][0]["label"]


def test_a_grpc_call_is_logged_with_its_request_id_and_protocol(logged: tuple[Served, Path]) -> None:
    import numpy as np
    import tritonclient.grpc as tc

    served, _ = logged
    assert served.grpc is not None
    pixels = tc.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(np.array([ROW], np.float32))
    answer = tc.InferenceServerClient(served.grpc).infer("digits", [pixels], headers={"x-request-id": "grpc-7"})
    entry: dict[str, Any] = {}
    for _ in range(50):  # the writer thread flushes within moments
        rows = httpx.get(f"{served.url}/v1/admin/payloads", params={"endpoint": "digits", "limit": 20},
                         headers=AUTH, timeout=30).json()
        entry = next((e for e in rows if e["request_id"] == "grpc-7"), {})
        if entry:
            break
        time.sleep(0.1)
    assert entry["protocol"] == "grpc" and entry["version"] == answer.get_response().model_version
    assert entry["inputs"] == [ROW] and entry["outputs"][0]["label"] == int(answer.as_numpy("probabilities").argmax())


def test_a_redacting_endpoint_leaves_no_raw_input_on_disk(logged: tuple[Served, Path],
                                                           tags: dict[str, str]) -> None:
    served, where = logged
    with httpx.Client(base_url=served.url, timeout=60) as c:
        made = c.post("/v1/admin/endpoints", headers=AUTH, json={
            "name": "private-digits", "task": "image-classification", "model": tags["mlp"],
            "redact_payloads": True, "reason": "patients' scans"})
        assert made.status_code == 201, made.text
        marked = [13.4375] * 64  # a value no other test sends
        for _ in range(20):
            assert c.post("/v1/private-digits/predict", json={"inputs": [marked]}).status_code == 200
        logged_entries = []
        for _ in range(50):
            logged_entries = c.get("/v1/admin/payloads", params={"endpoint": "private-digits", "limit": 20},
                                   headers=AUTH).json()
            if len(logged_entries) == 20:
                break
    assert len(logged_entries) == 20 and all(set(i) == {"sha256"} for e in logged_entries for i in e["inputs"])
    assert "13.4375" not in "".join(p.read_text() for p in where.glob("payloads-*.jsonl"))


def test_the_monitoring_page_lists_the_newest_payloads_for_operators(logged: tuple[Served, Path],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    served, _ = logged
    httpx.post(f"{served.url}/v1/digits/predict", json={"inputs": [ROW]}, headers={"X-Request-ID": "on-the-page"},
               timeout=30)
    monkeypatch.setenv("SWITCHYARD_SERVICE_URL", served.url)
    monkeypatch.setenv("SWITCHYARD_ADMIN_TOKEN", TOKEN)
    for _ in range(20):
        at = AppTest.from_file(str(ROOT / "admin" / "views" / "monitoring.py"), default_timeout=60)
        with console_on_loopback():
            at.run()
        assert not at.exception, at.exception
        tables = [t.value for t in at.dataframe if "request id" in t.value.columns]
        if tables and "on-the-page" in set(tables[0]["request id"]):
            break
        time.sleep(0.5)
    assert tables and "on-the-page" in set(tables[0]["request id"])
