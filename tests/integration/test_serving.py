"""The serving core against a real `bentoml serve` subprocess with two workers."""

from __future__ import annotations

import asyncio
import http.client
import math
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from models.families.digits import splits
from tests.conftest import ROOT
from tests.faulty import register_copy
from tests.integration.conftest import AUTH, deploy
from tests.servers import Served, every_worker, per_worker

pytestmark = pytest.mark.integration

X_TEST, Y_TEST = splits()["test"]
ROW = X_TEST[0].tolist()


def predict(client: httpx.Client, rows: list[list[float]], **headers: str) -> httpx.Response:
    return client.post("/v1/digits/predict", json={"inputs": rows}, headers=headers)


def routes(server: Served, n: int, concurrency: int = 32) -> tuple[Counter[str], Counter[int]]:
    """Send n single-row requests concurrently; count X-Model-Version and status codes."""

    async def run() -> tuple[Counter[str], Counter[int]]:
        versions: Counter[str] = Counter()
        statuses: Counter[int] = Counter()
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=concurrency)) as c:
            async def one(i: int) -> None:
                async with sem:
                    r = await c.post("/v1/digits/predict", json={"inputs": [X_TEST[i % len(X_TEST)].tolist()]})
                statuses[r.status_code] += 1
                versions[r.headers.get("x-route", "?") + " " + r.headers.get("x-model-version", "?")] += 1
            await asyncio.gather(*(one(i) for i in range(n)))
        return versions, statuses

    return asyncio.run(run())


def test_service_import_leaves_torch_and_transformers_out() -> None:
    code = ("import sys, service; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


def test_both_endpoints_answer_with_the_contract(client: httpx.Client, tags: dict[str, str]) -> None:
    assert deploy(client, "digits", [(tags["mlp"], "stable", 100)]).status_code == 200
    r = predict(client, X_TEST[:3].tolist())
    assert r.status_code == 200
    body = r.json()
    assert [p["label"] for p in body["predictions"]] == Y_TEST[:3].tolist()
    assert all(len(p["probabilities"]) == 10 and 0 < p["confidence"] <= 1 for p in body["predictions"])
    assert body["model_version"] == tags["mlp"] == r.headers["x-model-version"]
    assert body["route"] == "stable" == r.headers["x-route"]
    assert set(body["latency_ms"]) == {"queue", "inference", "total"}
    r = client.post("/v1/minilm/embed", json={"texts": ["hello world", "bonjour le monde"]})
    assert r.status_code == 200
    emb = r.json()["embeddings"]
    assert len(emb) == 2 and len(emb[0]) == 384
    assert math.isclose(sum(v * v for v in emb[0]), 1.0, rel_tol=1e-3)
    assert r.headers["x-model-version"] == tags["minilm"]


def test_ninety_ten_split_over_2000_requests(server: Served, client: httpx.Client, tags: dict[str, str]) -> None:
    assert deploy(client, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)]).status_code == 200
    time.sleep(1)
    versions, statuses = routes(server, 2000)
    assert statuses == Counter({200: 2000})
    canary = versions[f"canary {tags['cnn']}"]
    assert abs(canary - 200) <= 4 * math.sqrt(2000 * 0.1 * 0.9), versions
    assert canary + versions[f"stable {tags['mlp']}"] == 2000


def test_weight_change_takes_effect_within_one_second(server: Served, client: httpx.Client,
                                                      tags: dict[str, str]) -> None:
    assert deploy(client, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)]).status_code == 200
    time.sleep(1)
    changed = time.monotonic()
    assert deploy(client, "digits", [(tags["mlp"], "stable", 0), (tags["cnn"], "canary", 100)]).status_code == 200
    time.sleep(max(0.0, 1.0 - (time.monotonic() - changed)))
    versions, _ = routes(server, 200)  # spread over both workers
    assert versions == Counter({f"canary {tags['cnn']}": 200})
    health = client.get("/v1/health").json()
    assert health["endpoints"]["digits"]["versions"][0]["weight"] == 0


def test_failing_canary_falls_back_with_no_client_errors(server: Served, client: httpx.Client,
                                                         tags: dict[str, str]) -> None:
    r = deploy(client, "digits", [(tags["mlp"], "stable", 50), (tags["faulty"], "canary", 50)])
    assert r.status_code == 200, r.text  # it loads and warms: only real inputs break it
    time.sleep(1)
    versions, statuses = routes(server, 300)
    assert statuses == Counter({200: 300})
    assert set(versions) <= {f"stable {tags['mlp']}", f"fallback {tags['mlp']}"}
    assert versions[f"fallback {tags['mlp']}"] > 0
    metrics = client.get("/metrics").text
    assert f'switchyard_fallbacks_total{{endpoint="digits",version="{tags["faulty"]}"}}' in metrics
    # /v1/health is one worker's view; the metric is the worst state over all workers.
    assert f'switchyard_circuit_state{{endpoint="digits",version="{tags["faulty"]}"}} 2.0' in metrics
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])


BAD_INPUTS = [
    ("/v1/digits/predict", {"inputs": [[1.0] * 63]}, 422, "inputs.0"),
    ("/v1/digits/predict", {"inputs": [[1.0] * 65]}, 422, "at most 64"),
    ("/v1/digits/predict", {"inputs": [[17.0] + [1.0] * 63]}, 422, "less than or equal to 16"),
    ("/v1/digits/predict", {"inputs": [[-1.0] + [1.0] * 63]}, 422, "greater than or equal to 0"),
    ("/v1/digits/predict", {"inputs": []}, 422, "at least 1"),
    ("/v1/digits/predict", {"inputs": [[1.0] * 64] * 65}, 422, "at most 64 items"),
    ("/v1/digits/predict", {"inputs": "abc"}, 422, "inputs"),
    ("/v1/digits/predict", {"inputs": [["1"] * 64]}, 422, "valid number"),
    ("/v1/digits/predict", {"rows": [[1.0] * 64]}, 422, "inputs"),
    ("/v1/minilm/embed", {"texts": []}, 422, "at least 1"),
    ("/v1/minilm/embed", {"texts": ["x" * 2001]}, 422, "at most 2000 characters"),
    ("/v1/minilm/embed", {"texts": [""]}, 422, "texts.0"),
    ("/v1/minilm/embed", {"texts": [1, 2]}, 422, "valid string"),
    ("/v1/minilm/embed", {"texts": ["a"] * 65}, 422, "at most 64"),
]


@pytest.mark.parametrize("path, body, status, needle", BAD_INPUTS)
def test_bad_input_gets_a_4xx_naming_field_and_limit(client: httpx.Client, path: str, body: object, status: int,
                                                     needle: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


@pytest.mark.parametrize("raw", [b'{"inputs": [[NaN' + b', 1' * 63 + b"]]}",
                                 b'{"inputs": [[Infinity' + b', 1' * 63 + b"]]}",
                                 b'{"inputs": [[1, 2', b"not json at all"])
def test_non_finite_and_malformed_json(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/v1/digits/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"]


def test_oversized_body_and_server_stays_healthy(client: httpx.Client) -> None:
    big = b'{"texts": ["' + b"a" * 1_100_000 + b'"]}'
    r = client.post("/v1/minilm/embed", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "1000000 bytes" in r.json()["detail"]
    assert client.get("/readyz").status_code == 200
    assert predict(client, [ROW]).status_code == 200


def test_admin_refuses_missing_and_wrong_tokens(client: httpx.Client) -> None:
    assert client.get("/v1/admin/deployments").status_code == 401
    wrong = client.get("/v1/admin/deployments", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "bearer token" in wrong.json()["detail"]
    assert client.get("/v1/admin/deployments", headers=AUTH).status_code == 200


def test_rejected_changes_leave_the_deployment_as_it_was(client: httpx.Client, tags: dict[str, str]) -> None:
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])
    before = client.get("/v1/admin/deployments/digits", headers=AUTH).json()
    cases = [
        ([(tags["mlp"], "stable", 80), (tags["cnn"], "canary", 10)], "sum to 100"),
        ([(tags["mlp"], "stable", 90), ("digits-nope:v1", "canary", 10)], "versions[1].tag"),
        ([(tags["mlp"], "stable", 90), (tags["minilm"], "canary", 10)], "endpoint digits serves image-classification"),
        ([(tags["mlp"], "canary", 100)], "exactly one 'stable'"),
    ]
    for versions, needle in cases:
        r = deploy(client, "digits", versions)
        assert r.status_code == 422 and needle in r.text, r.text
    stale = {"versions": [{"tag": tags["mlp"], "role": "stable", "weight": 100}], "reason": "stale view",
             "expect_revision": before["revision"] - 1}
    r = client.put("/v1/admin/deployments/digits", json=stale, headers=AUTH)
    assert r.status_code == 409 and "reload and try again" in r.text
    oversampled = {"versions": [{"tag": tags["mlp"], "role": "stable", "weight": 100}], "reason": "too much",
                   "shadow_sample": 150}
    r = client.put("/v1/admin/deployments/digits", json=oversampled, headers=AUTH)
    assert r.status_code == 422 and "shadow_sample" in r.text and "100" in r.text, r.text
    after = client.get("/v1/admin/deployments/digits", headers=AUTH).json()
    assert after["revision"] == before["revision"] and after["versions"] == before["versions"]


def test_version_failing_its_sha256_is_refused(client: httpx.Client, tags: dict[str, str]) -> None:
    tag, path = register_copy(tags["cnn"], "digits-tampered-fp32")
    with (path / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])
    r = deploy(client, "digits", [(tags["mlp"], "stable", 90), (tag, "canary", 10)])
    assert r.status_code == 422 and "sha256" in r.text and "traffic stays where it was" in r.text
    assert predict(client, [ROW]).headers["x-model-version"] == tags["mlp"]


def test_version_altered_with_its_hash_is_refused_by_its_signature(client: httpx.Client,
                                                                   tags: dict[str, str]) -> None:
    """Whoever can write the store can make a file and its recorded sha256 agree; not the signature."""
    import bentoml

    from bentos.artifacts import sha256_file

    tag, path = register_copy(tags["cnn"], "digits-resigned-fp32")
    with (path / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    model = bentoml.models.get(tag)
    model.info.metadata["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
    model._write_info()
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])
    r = deploy(client, "digits", [(tags["mlp"], "stable", 90), (tag, "canary", 10)])
    assert r.status_code == 422 and "altered after it was signed" in r.text, r.text
    assert predict(client, [ROW]).headers["x-model-version"] == tags["mlp"]


def test_promote_rollback_and_audit(client: httpx.Client, tags: dict[str, str]) -> None:
    deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="baseline")
    r = deploy(client, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)], reason="try cnn")
    canary_rev = r.json()["revision"]
    r = client.post("/v1/admin/deployments/digits/promote", json={"reason": "looks good"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["versions"] == [{"tag": tags["cnn"], "weight": 100, "role": "stable"}]
    assert client.post("/v1/admin/deployments/digits/promote", json={}, headers=AUTH).status_code == 409
    r = client.post("/v1/admin/deployments/digits/rollback", json={"reason": "oops"}, headers=AUTH)
    assert r.status_code == 200 and len(r.json()["versions"]) == 2
    r = client.post("/v1/admin/deployments/digits/rollback", json={"revision": canary_rev - 1, "reason": "x"},
                    headers=AUTH)
    assert r.json()["versions"] == [{"tag": tags["mlp"], "weight": 100, "role": "stable"}]
    audit = client.get("/v1/admin/audit?endpoint=digits&limit=4", headers=AUTH).json()
    assert [a["action"] for a in audit] == ["rollback", "rollback", "promote", "deploy"]
    assert all(a["actor"] == "admin" for a in audit)
    assert audit[2]["reason"] == "looks good" and audit[2]["before"]["versions"][1]["role"] == "canary"
    assert client.post("/v1/admin/deployments/digits/rollback", json={"revision": 999}, headers=AUTH).status_code == 422


def test_pinning_and_sticky_routing(client: httpx.Client, server: Served, tags: dict[str, str]) -> None:
    """Pins and sticky keys hold on every worker: each is asked on a connection of its own, and a key's
    version must be the same whichever worker answers."""
    revision = deploy(client, "digits", [(tags["mlp"], "stable", 50), (tags["cnn"], "canary", 50)],
                      sticky=True).json()["revision"]
    every_worker(server.url, lambda c: c.get("/v1/health").json()["endpoints"]["digits"]["revision"] >= revision, 2)
    pinned = per_worker(server.url, lambda c: predict(c, [ROW], **{"X-Model-Version": "digits-cnn-fp32"}), 2)
    for r in pinned.values():
        assert r.headers["x-model-version"] == tags["cnn"] and r.json()["route"] == "pinned"
    assert all(r.status_code == 404 for r in per_worker(
        server.url, lambda c: predict(c, [ROW], **{"X-Model-Version": "nope"}), 2).values())
    chosen = {}
    for key in ("alice", "bob", "carol", "dave", "erin", "frank"):
        seen = per_worker(server.url, lambda c, key=key: {predict(c, [ROW], **{"X-Routing-Key": key}).headers[
            "x-model-version"] for _ in range(5)}, 2)
        assert len(set().union(*seen.values())) == 1, f"{key} saw {seen}"
        chosen[key] = next(iter(set().union(*seen.values())))
    assert set(chosen.values()) == {tags["mlp"], tags["cnn"]}  # 50/50: six keys are not all on one side
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])


def test_shadow_traffic_is_compared_not_returned(client: httpx.Client, tags: dict[str, str]) -> None:
    deploy(client, "digits", [(tags["mlp"], "stable", 100), (tags["cnn_int8"], "shadow", 0)])
    time.sleep(1)
    for i in range(40):
        r = predict(client, [X_TEST[i].tolist()])
        assert r.headers["x-model-version"] == tags["mlp"]
    time.sleep(1)
    metrics = client.get("/metrics").text
    assert f'switchyard_shadow_agreement_count{{endpoint="digits",primary="{tags["mlp"]}",' in metrics
    deploy(client, "digits", [(tags["mlp"], "stable", 100)])


def test_health_stats_and_metrics(client: httpx.Client, tags: dict[str, str]) -> None:
    health = client.get("/v1/health").json()
    assert health["ready"] and health["control_plane"]["ok"]
    assert {"digits", "minilm"} <= set(health["endpoints"])
    predict(client, [ROW])
    stats = client.get("/v1/admin/stats?window=300", headers=AUTH).json()
    assert stats["endpoints"]["digits"][tags["mlp"]]["requests"] > 0
    assert client.get("/v1/admin/models", headers=AUTH).json()
    metrics = client.get("/metrics").text
    for name in ("switchyard_requests_total", "switchyard_request_duration_seconds", "switchyard_queue_wait_seconds",
                 "switchyard_inference_duration_seconds", "switchyard_batch_size", "switchyard_circuit_state"):
        assert name in metrics
    assert "bentoml_" in metrics  # next to BentoML's own


def test_bursts_of_512_at_256_in_flight_have_no_5xx_and_no_transport_error(server: Served) -> None:
    """One request in 512 once ended in a connection reset: uvicorn closed connections idle for 5 s, which
    is httpx's own idle expiry, so a connection the client reused just then was closed under its request.
    Five bursts of minilm (each long enough for pooled connections to idle past 5 s); the cause itself is
    tested without luck below."""
    async def burst() -> Counter[int | str]:
        outcomes: Counter[int | str] = Counter()
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=256)) as c:
            async def one(i: int) -> None:
                try:
                    r = await c.post("/v1/minilm/embed", json={"texts": [f"burst sentence number {i} of many"]})
                    outcomes[r.status_code] += 1
                except httpx.TransportError as exc:
                    outcomes[type(exc).__name__] += 1
            await asyncio.gather(*(one(i) for i in range(512)))
        return outcomes

    outcomes = sum((asyncio.run(burst()) for _ in range(5)), Counter())
    assert outcomes == Counter({200: 2560})


def test_an_idle_connection_outlives_the_clients_own_idle_expiry(server: Served) -> None:
    """The cause of those resets, without the luck of timing: a connection idle for 6 s (past httpx's 5 s
    expiry, and uvicorn's default keep-alive) still takes a request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/livez")
        assert conn.getresponse().read() is not None
        first = conn.sock.getsockname()
        time.sleep(6)
        conn.request("GET", "/livez")
        response = conn.getresponse()
        assert response.status == 200 and conn.sock.getsockname() == first
    finally:
        conn.close()
