"""Two `bentoml serve` replicas on one real PostgreSQL control plane, as on Kubernetes.

The module has its own PostgreSQL server, because one test stops it (the outage).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AUTH, deploy, start_replica
from tests.servers import Postgres, Served

pytestmark = pytest.mark.integration
ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34


class Replicas:
    def __init__(self, tags: dict[str, str], db_url: str, root: Path) -> None:
        self.tags, self.db_url, self.root = tags, db_url, root
        self.a = self.start("a")
        self.b = self.start("b")

    def start(self, name: str) -> Served:
        return start_replica(self.tags, self.db_url, self.root, name, workers=1)


@pytest.fixture(scope="module")
def replicas(pg: Postgres, tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    pair = Replicas(tags, pg.url, tmp_path_factory.mktemp("replicas"))
    yield pair
    pair.a.kill()
    pair.b.kill()


def _client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=30)


def _digits(served: Served) -> dict[str, Any]:
    with _client(served) as c:
        return dict(c.get("/v1/health").json()["endpoints"]["digits"])


def _wait_revision(served: Served, revision: int, timeout: float = 60) -> float:
    """Seconds until the replica serves `revision` (loaded and swapped in)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _digits(served)["revision"] >= revision:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{served.url} still at {_digits(served)['revision']}, wanted {revision}")


def _put(served: Served, versions: list[tuple[str, str, int]], reason: str) -> httpx.Response:
    with _client(served) as c:
        return deploy(c, "digits", versions, reason=reason)


def _split(tags: dict[str, str], canary: int) -> list[tuple[str, str, int]]:
    return [(tags["mlp"], "stable", 100 - canary), (tags["cnn"], "canary", canary)]


def test_a_split_change_on_one_replica_reaches_the_other(replicas: Replicas) -> None:
    r = _put(replicas.a, _split(replicas.tags, 10), "replicas: 90/10 through A")
    assert r.status_code == 200, r.text
    _wait_revision(replicas.b, r.json()["revision"])  # the canary's first load may take a while
    r = _put(replicas.a, _split(replicas.tags, 50), "replicas: 50/50 through A")
    assert r.status_code == 200, r.text
    took = _wait_revision(replicas.b, r.json()["revision"], timeout=30)  # at its next poll, however loaded
    print(f"B served A's change after {took * 1000:.0f} ms")
    weights = {v["tag"]: v["weight"] for v in _digits(replicas.b)["versions"]}
    assert weights == {replicas.tags["mlp"]: 50, replicas.tags["cnn"]: 50}


def test_audit_entries_from_both_replicas_land_in_one_log(replicas: Replicas) -> None:
    marks = {name: f"audit from {name} {uuid.uuid4().hex[:8]}" for name in ("a", "b")}
    for name, served in (("a", replicas.a), ("b", replicas.b)):
        assert _put(served, _split(replicas.tags, 20), marks[name]).status_code == 200
    for served in (replicas.a, replicas.b):
        with _client(served) as c:
            reasons = [e["reason"] for e in c.get("/v1/admin/audit", headers=AUTH).json()]
        assert set(marks.values()) <= set(reasons)


def _load(served: Served, stop: threading.Event, seen: Counter[str]) -> None:
    with _client(served) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/digits/predict", json={"inputs": [ROW]})
                seen[str(r.status_code)] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1


def test_killing_a_replica_mid_load_loses_no_state_and_b_keeps_serving(replicas: Replicas) -> None:
    r = _put(replicas.a, _split(replicas.tags, 30), "replicas: before the kill")
    revision = r.json()["revision"]
    _wait_revision(replicas.b, revision)
    before = _digits(replicas.b)
    stop, on_b, on_a = threading.Event(), Counter[str](), Counter[str]()
    threads = [threading.Thread(target=_load, args=(replicas.b, stop, on_b)) for _ in range(3)]
    threads.append(threading.Thread(target=_load, args=(replicas.a, stop, on_a)))
    for t in threads:
        t.start()
    time.sleep(2)
    replicas.a.kill(signal.SIGKILL)
    with pytest.raises(httpx.ConnectError):  # really gone: no orphaned worker keeps the port
        httpx.get(f"{replicas.a.url}/livez", timeout=5)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert on_b["200"] > 50 and set(on_b) == {"200"}, on_b
    assert on_a["200"] > 0
    after = _digits(replicas.b)
    assert after["revision"] == revision and after["versions"] == before["versions"]

    replicas.a = replicas.start("a")  # a fresh process, the same control plane
    restarted = _digits(replicas.a)
    assert restarted["revision"] == revision
    assert [(v["tag"], v["role"], v["weight"]) for v in restarted["versions"]] == \
           [(v["tag"], v["role"], v["weight"]) for v in before["versions"]]


def test_replicas_serve_through_a_control_plane_outage_and_resync(replicas: Replicas, pg: Postgres) -> None:
    r = _put(replicas.a, _split(replicas.tags, 10), "replicas: before the outage")
    _wait_revision(replicas.b, r.json()["revision"])
    pg.stop()
    try:
        time.sleep(1.0)  # a poll notices
        with _client(replicas.b) as c:
            served = Counter(c.post("/v1/digits/predict", json={"inputs": [ROW]}).status_code for _ in range(40))
            assert served == {200: 40}
            health = c.get("/v1/health").json()
            assert health["control_plane"]["ok"] is False and health["endpoints"]["digits"]["revision"]
        refused = _put(replicas.a, _split(replicas.tags, 50), "replicas: during the outage")
        assert refused.status_code == 503
        assert "control plane unavailable" in refused.json()["detail"]
    finally:
        pg.start()
    deadline = time.monotonic() + 30
    while (r := _put(replicas.b, _split(replicas.tags, 40), "replicas: after the outage")).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
    for served in (replicas.a, replicas.b):
        _wait_revision(served, r.json()["revision"], timeout=10)
        with _client(served) as c:
            assert c.get("/v1/health").json()["control_plane"]["ok"] is True
