"""Many models on one machine, on a real two-worker `bentoml serve`: 40 endpoints created through the admin
API, each its own small model made here, loaded on demand within a memory budget; a rollout's versions
pinned; Triton's repository API driven by tritonclient."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.many_models import INPUTS, expected, register_many
from tests.integration.conftest import AUTH, TOKEN, deploy
from tests.servers import Served, serve_env

pytestmark = pytest.mark.integration
MIB = 1 << 20
HIDDEN = 8192  # a 2.2 MB graph; a loaded, warmed one grew a worker's RSS by 4.7 to 7.2 MB here
BUDGET = 48 * MIB  # about 8 of them
# What a worker may hold beyond its budget: Python objects, each version's batcher threads, the allocator's
# slack between a trim and the next load (stated in README: Many models).
OVERHEAD = 64 * MIB
N = 40


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return register_many(N + 4, tmp_path_factory.mktemp("many-models"), HIDDEN)


@pytest.fixture(scope="module")
def many(tenants: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two workers, no built-in endpoints (every version here is on-demand), a 48 MiB budget per worker."""
    state = tmp_path_factory.mktemp("state-many")
    (state / "switchyard.yaml").write_text("endpoints: []\n")
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN, model_memory=f"{BUDGET}",
                    config=str(state / "switchyard.yaml"), grpc_port="false")
    env["BENTOML_CONFIG_OPTIONS"] = "services.switchyard.workers=2"
    served = Served(env, log_dir=state)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


def create(c: httpx.Client, name: str, tag: str, residency: str = "on-demand") -> None:
    r = c.post("/v1/admin/endpoints", json={"name": name, "task": "tensor", "model": tag, "residency": residency,
                                            "reason": "many models"}, headers=AUTH)
    assert r.status_code == 201, r.text


def infer(c: httpx.Client, name: str, x: np.ndarray) -> httpx.Response:
    return c.post(f"/v1/{name}/infer", json={"inputs": {"x": x.tolist()}})


def metrics(server: Served) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items()))


def worker_rss(server: Served) -> dict[int, int]:
    workers = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
               if "worker" in " ".join(p.cmdline())]
    return {p.pid: p.memory_info().rss for p in workers}


@pytest.fixture(scope="module")
def forty(many: Served, tenants: dict[str, str]) -> list[str]:
    """Endpoints tenant-0 to tenant-39, made once for the tests that call them, in whatever order they run;
    made cold: a version on demand is described, not loaded, and does not hold readiness back."""
    with httpx.Client(base_url=many.url, timeout=60) as c:
        for i in range(N):
            create(c, f"tenant-{i}", tenants[f"tenant-{i}"])
        assert c.get("/readyz").status_code == 200
        health = c.get("/v1/health").json()["endpoints"]["tenant-0"]
        assert health["residency"] == "on-demand" and health["versions"][0]["state"] == "cold"
    return [f"tenant-{i}" for i in range(N)]


def test_forty_endpoints_each_answer_with_their_own_model_within_the_budget(many: Served, tenants: dict[str, str],
                                                                            forty: list[str]) -> None:
    baseline = worker_rss(many)
    assert len(baseline) == 2
    x = np.random.default_rng(0).standard_normal((2, INPUTS), dtype=np.float32)
    with httpx.Client(base_url=many.url, timeout=60) as c:
        peak: dict[str, float] = {}
        for i in range(N):
            # a new connection each time, so that both workers load and unload
            with httpx.Client(base_url=many.url, timeout=60) as fresh:
                r = infer(fresh, f"tenant-{i}", x)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(np.asarray(r.json()["outputs"]["y"]), expected(i, HIDDEN, x), rtol=1e-4,
                                       atol=1e-4)
            for labels, held in metrics(many).get("switchyard_resident_total_bytes", []):
                assert held <= BUDGET, f"worker {labels.get('pid')} holds {held} bytes of models, over {BUDGET}"
                peak[labels["pid"]] = max(peak.get(labels["pid"], 0), held)
        seen = metrics(many)
    versions = {lab["pid"]: v for lab, v in seen["switchyard_resident_versions"]}
    sizes = [v for lab, v in seen["switchyard_resident_bytes"] if v > 0]
    assert all(4 <= n <= BUDGET // min(sizes) for n in versions.values()), versions  # "about 8" each
    assert total(seen, "switchyard_model_evictions_total") >= N - sum(versions.values())
    assert total(seen, "switchyard_model_loads_total") >= N
    for pid, rss in worker_rss(many).items():
        assert rss <= baseline[pid] + BUDGET + OVERHEAD, f"worker {pid}: {rss - baseline[pid]} bytes more than at start"
    with httpx.Client(base_url=many.url, timeout=60) as c:
        models = {m["tag"]: m for m in c.get("/v1/admin/models", headers=AUTH).json()}
    assert all(models[tenants[f"tenant-{i}"]]["resident_bytes"] > 2 * MIB for i in range(N))


def test_concurrent_first_requests_to_a_cold_endpoint_cause_one_load_per_worker(many: Served,
                                                                                 tenants: dict[str, str]) -> None:
    name = f"tenant-{N}"
    x = np.ones((1, INPUTS), np.float32)
    with httpx.Client(base_url=many.url, timeout=60) as c:
        create(c, name, tenants[name])
    codes: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=many.url, timeout=60) as c:
            codes.append(infer(c, name, x).status_code)

    threads = [threading.Thread(target=one) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 32
    seen = metrics(many)
    assert 1 <= total(seen, "switchyard_model_loads_total", endpoint=name) <= 2  # one per worker at most
    assert total(seen, "switchyard_load_waits_total", endpoint=name) >= 2


def resident_on_every_worker(server: Served, endpoint: str) -> dict[str, set[str]]:
    """Tags with bytes held, per worker, from the workers' own gauges."""
    out: dict[str, set[str]] = {}
    for labels, held in metrics(server)["switchyard_resident_bytes"]:
        if labels["endpoint"] == endpoint and held > 0:
            out.setdefault(labels["pid"], set()).add(labels["version"])
    return out


def test_a_rollouts_versions_stay_resident_until_it_ends(many: Served, tenants: dict[str, str],
                                                        forty: list[str]) -> None:
    name, a, b = f"tenant-{N + 1}", tenants[f"tenant-{N + 1}"], tenants[f"tenant-{N + 2}"]
    x = np.ones((1, INPUTS), np.float32)
    with httpx.Client(base_url=many.url, timeout=60) as c:
        create(c, name, a)
        assert deploy(c, name, [(a, "stable", 50), (b, "canary", 50)]).status_code == 200
        for i in range(N):  # pressure: every other endpoint wants the memory
            with httpx.Client(base_url=many.url, timeout=60) as fresh:
                assert infer(fresh, f"tenant-{i}", x).status_code == 200
        held = resident_on_every_worker(many, name)
        assert len(held) == 2 and all(tags == {a, b} for tags in held.values()), held
        assert deploy(c, name, [(b, "stable", 100)]).status_code == 200  # the rollout ends: b promoted
        for i in range(N):
            with httpx.Client(base_url=many.url, timeout=60) as fresh:
                assert infer(fresh, f"tenant-{i}", x).status_code == 200
        versions = c.get("/v1/health").json()["endpoints"][name]["versions"]
    assert [(v["tag"], v["pins"]) for v in versions] == [(b, [])]  # unpinned now: it may go when idle


def test_tritonclient_lists_loads_and_unloads_models(many: Served, tenants: dict[str, str]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    name = f"tenant-{N + 3}"
    with httpx.Client(base_url=many.url, timeout=60) as c:
        create(c, name, tenants[name])
        create(c, "pinned-always", tenants["tenant-0"], residency="always")
    client = triton.InferenceServerClient(url=many.url.removeprefix("http://"))
    index = {m["name"]: m for m in client.get_model_repository_index(headers=AUTH)}
    assert index[name]["state"] == "UNAVAILABLE" and "on-demand" in index[name]["reason"]
    assert index["pinned-always"]["state"] == "READY"
    client.load_model(name, headers=AUTH)
    assert {m["name"]: m for m in client.get_model_repository_index(headers=AUTH)}[name]["state"] == "READY"
    loaded = _until(lambda: resident_on_every_worker(many, name), lambda held: len(held) == 2)
    assert all(tags == {tenants[name]} for tags in loaded.values())
    with httpx.Client(base_url=many.url, timeout=60) as c:
        audit = c.get(f"/v1/admin/audit?endpoint={name}", headers=AUTH).json()
    assert audit[0]["action"] == "repository-load"
    client.unload_model(name, headers=AUTH)
    _until(lambda: resident_on_every_worker(many, name), lambda held: not held)
    with pytest.raises(InferenceServerException, match="residency: always"):
        client.unload_model("pinned-always", headers=AUTH)
    with pytest.raises(InferenceServerException, match="operator role"):
        client.load_model(name)  # no token
    with pytest.raises(InferenceServerException, match="unknown endpoint"):
        client.load_model("no-such-model", headers=AUTH)
    assert client.is_server_live()


def _until(read: Any, good: Any, timeout_s: float = 10.0) -> Any:
    """Poll `read` until `good` holds (workers apply the repository's changes at their next poll)."""
    import time

    end = time.monotonic() + timeout_s
    value = read()
    while not good(value) and time.monotonic() < end:
        time.sleep(0.1)
        value = read()
    assert good(value), json.dumps(value, default=sorted)
    return value
