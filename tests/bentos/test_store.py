"""The control-plane store, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bentos.controlplane.store import (
    KEYS_AUDIT,
    ControlPlane,
    EndpointBusy,
    EndpointExists,
    KeyExists,
    PostgresControlPlane,
    RevisionConflict,
    SQLiteControlPlane,
    StoredKey,
    StoreUnavailable,
)
from bentos.dataplane.access import digest

SPEC_A = {"versions": [{"tag": "m:1", "weight": 100, "role": "stable"}], "sticky": False}
SPEC_B = {"versions": [{"tag": "m:1", "weight": 90, "role": "stable"}, {"tag": "m:2", "weight": 10, "role": "canary"}],
          "sticky": True}


def test_revisions_and_audit(store: ControlPlane) -> None:
    assert store.current_revisions() == {}
    r1 = store.write_deployment("digits", SPEC_A, actor="alice", action="deploy", reason="first")
    r2 = store.write_deployment("digits", SPEC_B, actor="bob", action="deploy", reason="canary")
    assert (r1.revision, r2.revision) == (1, 2)
    assert store.current_revisions() == {"digits": 2}
    current = store.get_deployment("digits")
    assert current is not None and current.spec == SPEC_B and current.actor == "bob"
    assert store.get_deployment("digits", 1).spec == SPEC_A  # type: ignore[union-attr]
    assert [r.revision for r in store.revisions("digits")] == [2, 1]
    entries = store.audit("digits")
    assert [e["actor"] for e in entries] == ["bob", "alice"]
    assert entries[0]["before"] == SPEC_A and entries[0]["after"] == SPEC_B and entries[0]["reason"] == "canary"
    assert entries[0]["details"]["revision"] == 2


def test_expected_revision_guards_against_lost_updates(store: ControlPlane) -> None:
    store.write_deployment("digits", SPEC_A, actor="a", action="default", reason="r", expect_revision=0)
    with pytest.raises(RevisionConflict):
        store.write_deployment("digits", SPEC_B, actor="b", action="default", reason="r", expect_revision=0)
    assert store.current_revisions() == {"digits": 1}
    assert len(store.audit()) == 1  # the refused change left no audit entry


def test_a_failed_change_leaves_nothing_half_written(store: ControlPlane) -> None:
    store.write_deployment("digits", SPEC_A, actor="a", action="deploy", reason="r")
    with pytest.raises(TypeError):
        store.write_deployment("digits", {"not": {"json": object()}}, actor="a", action="deploy", reason="r")
    assert store.current_revisions() == {"digits": 1}
    assert len(store.audit()) == 1


def test_concurrent_writers_get_distinct_revisions(store: ControlPlane) -> None:
    errors: list[Exception] = []

    def write(i: int) -> None:
        try:
            store.write_deployment("minilm", SPEC_A, actor=f"w{i}", action="deploy", reason=str(i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.revision for r in store.revisions("minilm")) == list(range(1, 9))


def test_stats_upsert_and_read(store: ControlPlane) -> None:
    row: Any = ("digits", "v1", 100, 5, 1, 0, [1, 2, 3])
    store.write_stats("worker-a", [row])
    store.write_stats("worker-a", [("digits", "v1", 100, 7, 1, 0, [2, 2, 3])])  # cumulative: replaces
    store.write_stats("worker-b", [("digits", "v1", 100, 3, 0, 1, [0, 1, 0])])
    rows = store.read_stats(100, "digits")
    assert sorted(r[3] for r in rows) == [3, 7]
    store.prune_stats(101)
    assert store.read_stats(0) == []


def test_leases_are_exclusive_until_they_expire(store: ControlPlane) -> None:
    assert store.acquire_lease("rollout:digits", "w1", ttl_s=30)
    assert not store.acquire_lease("rollout:digits", "w2", ttl_s=30)
    assert store.acquire_lease("rollout:digits", "w1", ttl_s=30)  # renewal
    store.release_lease("rollout:digits", "w1")
    assert store.acquire_lease("rollout:digits", "w2", ttl_s=-1)  # already expired
    assert store.acquire_lease("rollout:digits", "w3", ttl_s=30)


def test_shadow_agreement_is_summed_across_sources(store: ControlPlane) -> None:
    store.write_stats("w1", [], [("digits", "m:2", 10, 4, 3.5)])
    store.write_stats("w2", [], [("digits", "m:2", 10, 2, 2.0), ("digits", "m:2", 11, 1, 1.0)])
    store.write_stats("w1", [], [("digits", "m:2", 10, 5, 4.5)])  # cumulative: replaces w1's row
    assert store.read_agreement(10, "digits") == {"m:2": (8, 7.5)}
    assert store.read_agreement(11, "digits") == {"m:2": (1, 1.0)} and store.read_agreement(0, "minilm") == {}
    store.prune_stats(11)
    assert store.read_agreement(0, "digits") == {"m:2": (1, 1.0)}


def test_rollout_state_and_its_audit_entry_are_written_together(store: ControlPlane) -> None:
    assert store.get_rollout("digits") is None and store.rollouts() == []
    store.put_rollout("digits", {"status": "running", "step": 0})
    store.put_rollout("digits", {"status": "paused", "step": 1}, audit=("bob", "rollout-pause", "why", {"step": 25}))
    assert store.get_rollout("digits") == {"status": "paused", "step": 1, "version": 2} and len(store.rollouts()) == 1
    entry = store.audit("digits")[0]
    assert (entry["actor"], entry["action"], entry["details"]) == ("bob", "rollout-pause", {"step": 25})
    with pytest.raises(TypeError):  # a state that cannot be stored changes nothing
        store.put_rollout("digits", {"status": object()}, audit=("bob", "x", "y", None))
    assert store.get_rollout("digits") == {"status": "paused", "step": 1, "version": 2}
    assert len(store.audit("digits")) == 1


def test_a_lease_fences_off_its_old_holder_by_token_and_database_time(store: ControlPlane) -> None:
    import time

    from bentos.controlplane.store import Fenced

    first = store.acquire_lease("rollout:digits", "w1", ttl_s=0.2)
    assert first is not None and store.acquire_lease("rollout:digits", "w1", ttl_s=0.2) == first  # renewal
    store.update_rollout("digits", lambda _s: ({"status": "running"}, None), fence=first)  # holder writes
    time.sleep(0.3)
    with pytest.raises(Fenced, match="expired"):  # a long pause: the lease lapsed, nobody took it yet
        store.update_rollout("digits", lambda _s: ({"status": "rolled_back"}, None), fence=first)
    second = store.acquire_lease("rollout:digits", "w2", ttl_s=30)
    assert second is not None and second.token > first.token
    with pytest.raises(Fenced, match="no longer held by w1"):
        store.write_deployment("digits", SPEC_B, actor="c", action="rollout-advance", reason="stale",
                               rollout=lambda _s: ({"status": "running"}, None), fence=first)
    assert store.get_deployment("digits") is None and store.get_rollout("digits")["status"] == "running"
    again = store.acquire_lease("rollout:digits", "w1", ttl_s=30)
    assert again is None  # w2 holds it


def test_a_deployment_and_its_rollout_state_land_together_or_not_at_all(store: ControlPlane) -> None:
    from bentos.controlplane.store import StaleRollout

    store.write_deployment("digits", SPEC_A, actor="a", action="deploy", reason="first")
    store.write_deployment("digits", SPEC_B, actor="a", action="rollout-start", reason="go",
                           rollout=lambda _s: ({"status": "running", "step": 0}, None))
    assert store.get_rollout("digits") == {"status": "running", "step": 0, "version": 1}

    def stale(stored: dict[str, Any] | None) -> Any:
        raise StaleRollout("read at version 0")

    with pytest.raises(StaleRollout):
        store.write_deployment("digits", SPEC_A, actor="c", action="rollout-rollback", reason="late", rollout=stale)
    assert store.get_deployment("digits").revision == 2  # no revision without its rollout state
    assert store.audit("digits")[0]["action"] == "rollout-start"


def test_unreachable_postgres_is_reported_as_unavailable() -> None:
    from tests.servers import free_port

    with pytest.raises(StoreUnavailable, match="unreachable"):
        PostgresControlPlane(f"postgresql://nobody@127.0.0.1:{free_port()}/x", timeout_s=1)


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    import sqlite3

    SQLiteControlPlane(tmp_path / "c.db")
    assert sqlite3.connect(tmp_path / "c.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_engine_prunes_old_shared_stats(tmp_path: Path) -> None:
    import time

    from bentos.controlplane.engine import STATS_RETENTION_S, Engine
    from bentos.dataplane.stats import bucket_of
    from bentos.settings import ServeSettings

    engine = Engine(ServeSettings(state_dir=tmp_path))
    engine.store = SQLiteControlPlane(tmp_path / "control.db")
    old, new = bucket_of(time.time() - STATS_RETENTION_S - 60), bucket_of(time.time())
    engine.store.write_stats("w", [("digits", "v1", old, 1, 0, 0, [1]), ("digits", "v1", new, 2, 0, 0, [2])])
    await engine.prune_stats()
    assert [r[2] for r in engine.store.read_stats(0)] == [new]


def test_endpoints_are_created_once_deleted_whole_and_audited(store: ControlPlane) -> None:
    config = {"name": "shop", "task": "tensor"}
    store.put_endpoint("shop", config, source="api", actor="alice", action="endpoint-create", reason="new",
                       create_only=True)
    with pytest.raises(EndpointExists):
        store.put_endpoint("shop", config, source="api", actor="bob", action="endpoint-create", reason="again",
                           create_only=True)
    assert store.endpoints()["shop"].config == config and store.endpoints()["shop"].source == "api"
    store.write_deployment("shop", SPEC_A, actor="alice", action="deploy", reason="first")
    store.put_rollout("shop", {"status": "running", "canary": "m:2"})
    with pytest.raises(EndpointBusy, match="running"):
        store.delete_endpoint("shop", actor="bob", reason="gone")
    assert "shop" in store.endpoints() and store.current_revisions() == {"shop": 1}  # nothing half-deleted
    store.put_rollout("shop", {"status": "aborted", "canary": "m:2"})
    store.delete_endpoint("shop", actor="bob", reason="gone")
    assert store.endpoints() == {} and store.current_revisions() == {} and store.get_rollout("shop") is None
    actions = [a["action"] for a in store.audit("shop")]
    assert actions[0] == "endpoint-delete" and "endpoint-create" in actions
    assert store.audit("shop")[0]["details"]["last_deployment"] == SPEC_A


def test_api_keys_keep_only_a_digest_are_audited_and_a_live_name_is_not_reused(store: ControlPlane) -> None:
    key = StoredKey("shop", digest("sy_secret-1"), 5.0, 10.0, ["pin"], 1.0, "alice", None)
    store.create_key(key, reason="new client")
    with pytest.raises(KeyExists):
        store.create_key(StoredKey("shop", digest("sy_secret-2"), 1.0, 1.0, [], 2.0, "bob", None), reason="again")
    (kept,) = store.api_keys()
    assert kept.digest == digest("sy_secret-1") and kept.scopes == ["pin"] and kept.revoked_at is None
    changed = store.update_key("shop", {"rate": 50.0}, actor="bob", reason="bigger")
    assert (changed.rate, changed.burst) == (50.0, 10.0)
    store.update_key("shop", {}, actor="carol", reason="leaked", revoke=True)
    with pytest.raises(KeyError):
        store.update_key("shop", {"rate": 1.0}, actor="bob", reason="too late")
    assert store.api_keys()[0].revoked_at is not None
    store.create_key(StoredKey("shop", digest("sy_secret-3"), 1.0, 1.0, [], 3.0, "bob", None), reason="reissue")
    assert [k.digest for k in store.api_keys()] == [digest("sy_secret-3")]
    entries = store.audit(KEYS_AUDIT)
    assert [e["action"] for e in entries] == ["key-create", "key-revoke", "key-update", "key-create"]
    assert [e["actor"] for e in entries] == ["bob", "carol", "bob", "alice"]
    assert "sy_secret" not in json.dumps(entries)


def test_a_keys_weight_is_kept_changed_and_added_to_a_store_made_before_weights(store: ControlPlane) -> None:
    store.create_key(StoredKey("gold", digest("sy_gold"), 5.0, 10.0, [], 1.0, "alice", None, 3.0), reason="big")
    assert store.api_keys()[0].weight == 3.0 and store.api_keys()[0].public()["weight"] == 3.0
    assert store.update_key("gold", {"weight": 0.5}, actor="bob", reason="smaller").weight == 0.5
    assert store.api_keys()[0].weight == 0.5 and store.audit(KEYS_AUDIT)[0]["after"]["weight"] == 0.5
    with store.transaction() as cur:  # a store from before weights existed: no such column
        store._exec(cur, "ALTER TABLE api_keys DROP COLUMN weight")
    store.init_schema()  # what every boot runs
    (old,) = store.api_keys()
    assert old.name == "gold" and old.weight == 1.0  # every key weighed 1 then


def test_heartbeats_count_the_live_workers_and_forget_the_silent_and_the_gone(store: ControlPlane) -> None:
    assert store.heartbeat("host-a:1", ttl_s=5) == 1
    assert store.heartbeat("host-b:1", ttl_s=5) == 2
    assert store.heartbeat("host-a:1", ttl_s=5) == 2  # a worker is counted once
    store.leave("host-b:1")
    assert store.heartbeat("host-a:1", ttl_s=5) == 1
    store.heartbeat("host-c:1", ttl_s=5)
    time.sleep(0.3)
    assert store.heartbeat("host-a:1", ttl_s=0.2) == 1  # c went silent: by the database's clock, forgotten


def test_token_level_comparisons_are_summed_across_sources(store: ControlPlane) -> None:
    store.write_stats("w1", [], divergence=[("writer", "lm:2", 10, 4, 0.5, 0.25)])
    store.write_stats("w2", [], divergence=[("writer", "lm:2", 10, 2, 8.0, 3.0), ("writer", "lm:2", 11, 1, 0.1, 0.0)])
    store.write_stats("w1", [], divergence=[("writer", "lm:2", 10, 5, 0.75, 0.5)])  # cumulative: replaces w1's row
    assert store.read_divergence(10, "writer") == {"lm:2": (8, pytest.approx(8.85), pytest.approx(3.5))}
    assert store.read_divergence(11, "writer") == {"lm:2": (1, 0.1, 0.0)} and store.read_divergence(0, "x") == {}
    store.prune_stats(11)
    assert store.read_divergence(0, "writer") == {"lm:2": (1, 0.1, 0.0)}


def test_guarded_streams_are_summed_across_sources(store: ControlPlane) -> None:
    store.write_stats("w1", [], guarded=[("writer", "lm:2", 10, 40, 2)])
    store.write_stats("w2", [], guarded=[("writer", "lm:2", 10, 10, 1), ("writer", "lm:1", 11, 5, 0)])
    store.write_stats("w1", [], guarded=[("writer", "lm:2", 10, 50, 3)])  # cumulative: replaces w1's row
    assert store.read_guarded(10, "writer") == {"lm:2": (60, 4), "lm:1": (5, 0)}
    store.prune_stats(11)
    assert store.read_guarded(0, "writer") == {"lm:1": (5, 0)}
