"""Endpoints as data on a running `bentoml serve`: created through the admin API, no restart,
served through REST and the Open Inference Protocol over HTTP and gRPC (with tritonclient, Triton's own
client)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.user_models import color_images, normalise, png, register_user_models
from tests.integration.conftest import AUTH, deploy
from tests.servers import Served, every_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_tags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return register_user_models(tmp_path_factory.mktemp("user-models"))


def create(client: httpx.Client, name: str, task: str, model: str | None = None, **extra: Any) -> httpx.Response:
    body = {"name": name, "task": task, "reason": "test", **({"model": model} if model else {}), **extra}
    return client.post("/v1/admin/endpoints", json=body, headers=AUTH)


def until_served(client: httpx.Client, path: str, body: dict[str, Any], limit_s: float = 1.0) -> float:
    """Seconds until every one of a burst of requests (reaching both workers) answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        if all(client.post(path, json=body).status_code == 200 for _ in range(8)):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{path} not served by every worker after 10 s")


@pytest.fixture(scope="module")
def live(server: Served, user_tags: dict[str, str]) -> dict[str, str]:
    """Three endpoints added to the running two-worker service, each at 90/10."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for name, task, key in (("colors", "image-classification", "cnn"),
                                ("sentiment", "text-classification", "bert"), ("adder", "tensor", "tensor")):
            r = create(c, name, task, user_tags[key])
            assert r.status_code == 201, r.text
            assert r.json()["route"].startswith(f"/v1/{name}/") and r.json()["source"] == "api"
        for name, a, b in (("colors", "cnn", "cnn2"), ("sentiment", "bert", "bert2"), ("adder", "tensor", "tensor2")):
            r = deploy(c, name, [(user_tags[a], "stable", 90), (user_tags[b], "canary", 10)])
            assert r.status_code == 200, r.text
    return user_tags


def test_a_new_endpoint_serves_on_every_worker(server: Served, user_tags: dict[str, str]) -> None:
    """Each worker is asked on a connection of its own (it names itself in /v1/health), so a worker that never
    learns of the endpoint fails the test; README's "within a second" is printed, not raced."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert create(c, "quick", "tensor", user_tags["tensor"]).status_code == 201
        for _ in range(6):  # at once, on new connections, so some reach the worker that did not create it
            with httpx.Client(base_url=server.url, timeout=60) as fresh:
                r = deploy(fresh, "quick", [(user_tags["tensor"], "stable", 100)])
                assert r.status_code == 200, r.text
        body = {"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1.0, 1.0, 1.0]]}}
        served = every_worker(server.url, lambda w: w.post("/v1/quick/infer", json=body).status_code == 200, 2)
        assert c.delete("/v1/admin/endpoints/quick?reason=done", headers=AUTH).status_code == 200
        gone = every_worker(server.url, lambda w: w.post("/v1/quick/infer", json=body).status_code == 404, 2)
    print(f"served by both workers after {served:.2f} s, gone from both {gone:.2f} s after its deletion")


def test_image_endpoint_answers_pixels_base64_and_a_multipart_upload(server: Served, live: dict[str, str]) -> None:
    pics, labels = color_images(12, seed=7)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/colors/predict", json={"inputs": normalise(pics).tolist(), "top_k": 2})
        assert r.status_code == 200, r.text
        got = [p["label"] for p in r.json()["predictions"]]
        assert got == [("red", "green", "blue")[i] for i in labels]
        assert len(r.json()["predictions"][0]["top_k"]) == 2
        assert r.headers["x-model-version"] in (live["cnn"], live["cnn2"])
        images = [base64.b64encode(png(p)).decode() for p in pics[:4]]
        r = c.post("/v1/colors/predict", json={"images": images})
        assert [p["label"] for p in r.json()["predictions"]] == got[:4]
        r = c.post("/v1/colors/predict", files=[("image", ("a.png", png(pics[0]), "image/png"))])
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == got[0], r.text


def test_text_classifier_uses_id2label(server: Served, live: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/sentiment/predict", json={"texts": ["what a lovely day", "this is awful"]})
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            assert p["label"] in ("negative", "positive") and set(p["scores"]) == {"negative", "positive"}


def test_tensor_endpoint_takes_json_and_base64_binary(server: Served, live: dict[str, str]) -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    b = np.ones((2, 3), np.float32)
    binary = {"b64": base64.b64encode(a.astype("<f4").tobytes()).decode(), "dtype": "float32", "shape": [2, 3]}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for body in ({"a": a.tolist(), "b": b.tolist()}, {"a": binary, "b": b.tolist()}):
            r = c.post("/v1/adder/infer", json={"inputs": body})
            assert r.status_code == 200, r.text
            assert r.json()["outputs"]["sum"] == (a + b).tolist() and r.json()["outputs"]["dot"] == [6.0, 15.0]


def triton_client(server: Served, protocol: str) -> tuple[Any, Any]:
    """Triton's own client module and a client of it, over HTTP or gRPC."""
    if protocol == "http":
        import tritonclient.http as http

        return http, http.InferenceServerClient(url=server.url.removeprefix("http://"))
    import tritonclient.grpc as grpc

    assert server.grpc is not None
    return grpc, grpc.InferenceServerClient(server.grpc)


def answered_version(result: Any) -> str:
    response = result.get_response()
    return str(response["model_version"] if isinstance(response, dict) else response.model_version)


def tensors(meta: Any) -> list[dict[str, Any]]:
    if isinstance(meta, dict):
        return list(meta["inputs"])
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_infers_on_every_tensor_task_and_pins_a_version(server: Served, live: dict[str, str],
                                                                     protocol: str) -> None:
    triton, client = triton_client(server, protocol)
    json_data = {"binary_data": False} if protocol == "http" else {}  # gRPC has raw contents only
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("colors")
    assert tensors(client.get_model_metadata("colors")) == [{"name": "image", "datatype": "FP32",
                                                             "shape": [-1, 3, 16, 16]}]
    pics, labels = color_images(4, seed=3)
    image = triton.InferInput("image", [4, 3, 16, 16], "FP32")
    image.set_data_from_numpy(normalise(pics))  # binary tensor data, the client's default
    probs = client.infer("colors", [image]).as_numpy("probabilities")
    assert probs.shape == (4, 3) and probs.argmax(1).tolist() == labels.tolist()
    pinned = client.infer("colors", [image], model_version=live["cnn2"].split(":")[1])
    assert answered_version(pinned) == live["cnn2"]

    a, b = triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2, 3], "FP32")
    a.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3), **json_data)
    b.set_data_from_numpy(np.ones((2, 3), np.float32))
    out = client.infer("adder", [a, b], outputs=[triton.InferRequestedOutput("dot", **json_data)])
    assert out.as_numpy("dot").tolist() == [3.0, 12.0] and out.as_numpy("sum") is None

    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"great film", b"dreadful"], dtype=object))
    assert client.infer("sentiment", [text]).as_numpy("probabilities").shape == (2, 2)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("datatype", "shape", "needle"), [
    ("FP64", [1, 3, 16, 16], "datatype FP64 does not match the model's FP32"),
    ("FP32", [1, 3, 8, 8], "shape [1, 3, 8, 8] does not fit the model's [-1, 3, 16, 16]"),
])
def test_tritonclient_gets_a_clear_400(server: Served, live: dict[str, str], datatype: str, shape: list[int],
                                       needle: str, protocol: str) -> None:
    from tritonclient.utils import InferenceServerException

    triton, client = triton_client(server, protocol)
    bad = triton.InferInput("image", shape, datatype)
    bad.set_data_from_numpy(np.zeros(shape, np.float64 if datatype == "FP64" else np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("colors", [bad])
    assert info.value.status() == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[protocol]
    assert needle in info.value.message() and "input image" in info.value.message()
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_inputs_are_refused_on_every_protocol(server: Served, live: dict[str, str], bad: str) -> None:
    """NaN and Infinity once reached the model and came back as 200 with null outputs."""
    from tritonclient.utils import InferenceServerException

    body = f'{{"inputs": {{"a": [[1, 2, 3], [4, {bad}, 6]], "b": [[1, 1, 1], [1, 1, 1]]}}}}'
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/adder/infer", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "inputs.a.1", r.text
        assert "finite" in r.text
    value = np.array([[1, 2, 3], [4, float(bad), 6]], np.float32)
    for protocol in ("http", "grpc"):
        triton, client = triton_client(server, protocol)
        a, b = triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [2, 3], "FP32")
        a.set_data_from_numpy(value)
        b.set_data_from_numpy(np.ones((2, 3), np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("adder", [a, b])
        assert info.value.status() == {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}[protocol]
        assert "inputs.a.1" in info.value.message() and "finite" in info.value.message()


def test_new_endpoints_show_in_metrics_openapi_and_admin(server: Served, live: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        c.post("/v1/adder/infer", json={"inputs": {"a": [[1, 2, 3]], "b": [[1, 2, 3]]}})
        paths = c.get("/v1/openapi.json").json()["paths"]
        assert {"/v1/colors/predict", "/v1/sentiment/predict", "/v1/adder/infer", "/v1/digits/predict",
                "/v1/minilm/embed"} <= set(paths)
        assert "images" in str(paths["/v1/colors/predict"]["post"]["requestBody"])
        metrics = c.get("/metrics").text
        for name in ("colors", "sentiment", "adder"):
            assert f'endpoint="{name}"' in metrics
        listed = {e["name"]: e for e in c.get("/v1/admin/endpoints", headers=AUTH).json()}
        assert listed["digits"]["source"] == "config" and listed["colors"]["task"] == "image-classification"
        audit = c.get("/v1/admin/audit?endpoint=colors", headers=AUTH).json()
        assert "endpoint-create" in {a["action"] for a in audit}


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"name": "x1", "task": "audio"}, 422, "task: Value error, unknown task type 'audio'"),
    ({"name": "Bad_Name", "task": "tensor"}, 422, "name: Value error, must match"),
    ({"name": "admin", "task": "tensor"}, 422, "reserved"),
    ({"name": "digits", "task": "tensor"}, 409, "already exists"),
    ({"name": "x2", "task": "tensor", "limits": {"max_rows": 0}}, 422, "limits.max_rows"),
])
def test_bad_endpoints_are_refused_and_nothing_is_half_created(server: Served, live: dict[str, str],
                                                               body: dict[str, Any], status: int,
                                                               needle: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        before = c.get("/v1/admin/endpoints", headers=AUTH).json()
        r = c.post("/v1/admin/endpoints", json={**body, "reason": "test"}, headers=AUTH)
        assert r.status_code == status and needle in r.text, r.text
        assert c.get("/v1/admin/endpoints", headers=AUTH).json() == before
        assert c.get("/readyz").status_code == 200


def test_a_version_of_another_task_or_signature_gets_a_422_naming_both(server: Served, live: dict[str, str],
                                                                          tags: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = deploy(c, "colors", [(live["tensor"], "stable", 100)])
        assert r.status_code == 422 and "is a tensor model; endpoint colors serves image-classification" in r.text
        r = deploy(c, "colors", [(tags["mlp"], "stable", 100)])  # an image classifier of 64 pixels
        assert r.status_code == 422, r.text
        assert "pixels:float32[batch,64]" in r.text and "image:float32[batch,3,16,16]" in r.text
        r = create(c, "wrong", "tensor", tags["mlp"])
        assert r.status_code == 422 and "model:" in r.text
        assert "wrong" not in {e["name"] for e in c.get("/v1/admin/endpoints", headers=AUTH).json()}
        assert c.post("/v1/colors/predict", json={"inputs": [[1.0] * 5]}).status_code == 422


def test_delete_is_refused_for_declared_endpoints(server: Served, live: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.delete("/v1/admin/endpoints/digits?reason=try", headers=AUTH)
        assert r.status_code == 409 and "switchyard.yaml" in r.text
        assert c.delete("/v1/admin/endpoints/colors", headers=AUTH).status_code == 422  # no reason


def test_an_endpoint_with_a_running_rollout_cannot_be_deleted(server: Served, live: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        deploy(c, "adder", [(live["tensor"], "stable", 100)])
        r = c.post("/v1/admin/rollouts/adder", json={"tag": live["tensor2"], "reason": "test"}, headers=AUTH)
        assert r.status_code == 200, r.text
        r = c.delete("/v1/admin/endpoints/adder?reason=now", headers=AUTH)
        assert r.status_code == 409 and "rollout" in r.text
        assert c.post("/v1/admin/rollouts/adder/abort", json={"reason": "test"}, headers=AUTH).status_code == 200
        assert c.post("/v1/adder/infer", json={"inputs": {"a": [[1, 2, 3]], "b": [[1, 2, 3]]}}).status_code == 200


def test_playground_asks_any_endpoint(single_worker: Served, user_tags: dict[str, str], tmp_path: Path) -> None:
    from gradio_client import Client

    with httpx.Client(base_url=single_worker.url, timeout=60) as c:
        if "colors" not in {e["name"] for e in c.get("/v1/admin/endpoints", headers=AUTH).json()}:
            assert create(c, "colors", "image-classification", user_tags["cnn"]).status_code == 201
    gradio = Client(f"{single_worker.url}/playground/", verbose=False, download_files=str(tmp_path))
    pics, labels = color_images(2, seed=5)
    body = json.dumps({"images": [base64.b64encode(png(pics[0])).decode()]})
    answer = gradio.predict("colors", body, "pinned", "", user_tags["cnn"], api_name="/ask")
    assert answer["route"] == "pinned" and answer["results"][0]["label"] == ("red", "green", "blue")[labels[0]]
