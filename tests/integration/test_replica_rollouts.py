"""A rollout on two `bentoml serve` replicas of two workers each, sharing a real PostgreSQL control plane:
killing the replica whose controller holds the lease loses nothing; the other takes over within two
lease periods, and every decision is written once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.integration.conftest import AUTH, start_replica
from tests.integration.traffic import NO_ZERO, WITH_ZERO, Traffic
from tests.servers import Postgres, Served

pytestmark = pytest.mark.integration
LEASE_S = 5.0  # the controller's lease: max(3 x interval_s, 5 s)
POLICY = {"steps": [20, 50, 100], "min_requests": 40, "min_seconds": 4, "interval_s": 0.5, "latency_ratio": 4.0}


class Pair:
    def __init__(self, tags: dict[str, str], db_url: str, root: Path) -> None:
        self.tags, self.db_url, self.root = tags, db_url, root
        self.replicas = {name: self.start(name) for name in ("a", "b")}

    def start(self, name: str) -> Served:
        return start_replica(self.tags, self.db_url, self.root, name, workers=2)

    def holder_of(self, worker: str) -> str:
        """Which replica a lease holder (hostname:pid) runs in."""
        pid = int(worker.rsplit(":", 1)[1])
        for name, served in self.replicas.items():
            if served.proc.poll() is not None:  # killed on purpose: its processes are gone
                continue
            if pid in {p.pid for p in psutil.Process(served.proc.pid).children(recursive=True)} | {served.proc.pid}:
                return name
        raise AssertionError(f"{worker} is in neither replica")


@pytest.fixture
def pair(tags: dict[str, str], tmp_path: Path) -> Iterator[Pair]:
    pg = Postgres()
    pg.start()
    replicas = Pair(tags, pg.url, tmp_path)
    yield replicas
    for served in replicas.replicas.values():
        served.kill(signal.SIGKILL)
    pg.destroy()


def lease(db_url: str) -> tuple[str, int] | None:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT holder, token FROM leases WHERE name = 'rollout:digits'").fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def rollout(served: Served) -> dict[str, Any]:
    return dict(httpx.get(f"{served.url}/v1/admin/rollouts/digits", headers=AUTH, timeout=30).json())


def wait_for(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"{what} after {timeout} s")


def test_killing_the_lease_holders_replica_hands_the_rollout_over(pair: Pair) -> None:
    a = pair.replicas["a"]
    r = httpx.post(f"{a.url}/v1/admin/rollouts/digits", json={"tag": pair.tags["cnn"], "policy": POLICY,
                                                              "reason": "replicas"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    traffic = {name: Traffic(served.url, [WITH_ZERO, NO_ZERO], threads=2) for name, served in pair.replicas.items()}
    for t in traffic.values():
        t.__enter__()
    try:
        wait_for(lambda: lease(pair.db_url) is not None and rollout(a)["looks"] >= 2, 60, "no looks")
        holder, token = lease(pair.db_url)  # type: ignore[misc]
        dead = pair.holder_of(holder)
        alive = pair.replicas["b" if dead == "a" else "a"]
        looks = rollout(alive)["looks"]
        pair.replicas[dead].kill(signal.SIGKILL)
        killed = time.monotonic()
        taken = wait_for(lambda: (lease(pair.db_url) or ("", 0))[1] > token and rollout(alive)["looks"] > looks,
                         4 * LEASE_S, "no other controller took over")
        final = wait_for(lambda: rollout(alive)["status"] in ("promoted", "rolled_back"), 120, "no decision")
    finally:
        for t in traffic.values():
            t.__exit__()
    state = rollout(alive)
    print(f"lease holder {holder} in replica {dead} killed; taken over after {taken:.1f} s "
          f"(lease {LEASE_S:.0f} s); {state['status']} {time.monotonic() - killed:.1f} s after the kill")
    assert taken <= 2 * LEASE_S
    assert state["status"] == "promoted", state["history"][-3:]
    new_holder = lease(pair.db_url)
    assert new_holder is not None and pair.holder_of(new_holder[0]) != dead
    audit = httpx.get(f"{alive.url}/v1/admin/audit", params={"endpoint": "digits"}, headers=AUTH, timeout=30).json()
    decisions = [e for e in audit if e["action"] in ("rollout-advance", "rollout-promote", "rollout-rollback")]
    assert sorted(e["action"] for e in decisions) == ["rollout-advance", "rollout-promote"]  # each exactly once
    looks_written = [e["details"]["evidence"]["look"] for e in decisions]
    assert len(set(looks_written)) == len(looks_written)  # one decision per look
    survivor = traffic["b" if dead == "a" else "a"]
    assert traffic[dead].status[200] > 0
    assert set(survivor.status) == {200}, (survivor.status, survivor.errors, alive.log_text()[-3000:])
    assert final > 0


def test_a_bad_canary_is_rolled_back_across_replicas(pair: Pair) -> None:
    a, b = pair.replicas["a"], pair.replicas["b"]
    r = httpx.post(f"{b.url}/v1/admin/rollouts/digits", json={"tag": pair.tags["faulty"], "policy": POLICY,
                                                              "reason": "replicas: bad"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    with Traffic(a.url, [WITH_ZERO, NO_ZERO], threads=2) as on_a, Traffic(b.url, [WITH_ZERO, NO_ZERO], threads=2):
        wait_for(lambda: rollout(a)["status"] in ("promoted", "rolled_back"), 120, "no decision")
    assert rollout(a)["status"] == "rolled_back" and set(on_a.status) == {200}
