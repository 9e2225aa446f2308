"""The control plane: deployments with revision history, the audit log, shared stats, leases.

SQLite in WAL mode under SWITCHYARD_STATE_DIR by default; Postgres when SWITCHYARD_DB_URL
is set, so that replicas share one control plane. Every change is one transaction: a
new revision and its audit entry land together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bentos.dataplane.stats import add_counts


class StoreUnavailable(RuntimeError):
    """The control-plane database cannot be reached; serving goes on from the last known state."""


class RevisionConflict(RuntimeError):
    """Someone else changed the deployment first."""


class StaleRollout(RuntimeError):
    """A rollout write based on a state that changed since it was read (a pause, abort or another look)."""


class Fenced(RuntimeError):
    """A write by a controller whose lease expired or passed to another holder."""


@dataclass(frozen=True)
class Lease:
    """A held lease; `token` grows with every new holder, so a stale holder's writes can be refused."""

    name: str
    holder: str
    token: int


# Given the stored rollout state (or None), the state to write with the deployment (or None to leave it),
# and an audit entry (actor, action, reason, details) for it; may raise to refuse the whole transaction.
RolloutUpdate = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, tuple[str, str, str, Any] | None]]


class EndpointExists(RuntimeError):
    """An endpoint of that name is already stored."""


class EndpointBusy(RuntimeError):
    """The endpoint cannot be deleted now (a rollout runs on it)."""


@dataclass(frozen=True)
class StoredEndpoint:
    name: str
    config: dict[str, Any]
    source: str  # "config" (switchyard.yaml) or "api"
    created_at: float


class KeyExists(RuntimeError):
    """An API key of that name is live."""


@dataclass(frozen=True)
class StoredKey:
    """An API key as the control plane keeps it: never the secret, only its SHA-256."""

    name: str
    digest: str
    rate: float
    burst: float
    scopes: list[str]
    created_at: float
    created_by: str
    revoked_at: float | None
    weight: float = 1.0  # generation: the key's share of a busy version against other keys (fair shares)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "rate": self.rate, "burst": self.burst, "scopes": self.scopes,
                "weight": self.weight,
                "created_at": self.created_at, "created_by": self.created_by, "revoked_at": self.revoked_at,
                "active": self.revoked_at is None}


@dataclass(frozen=True)
class Revision:
    endpoint: str
    revision: int
    spec: dict[str, Any]
    actor: str
    action: str
    reason: str
    created_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    endpoint TEXT NOT NULL, revision INTEGER NOT NULL, spec TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, reason TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (endpoint, revision));
CREATE TABLE IF NOT EXISTS audit (
    id {serial} PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    endpoint TEXT NOT NULL, before TEXT, after TEXT, reason TEXT NOT NULL, details TEXT);
CREATE TABLE IF NOT EXISTS version_stats (
    source TEXT NOT NULL, endpoint TEXT NOT NULL, version TEXT NOT NULL, bucket BIGINT NOT NULL,
    requests BIGINT NOT NULL, errors BIGINT NOT NULL, fallbacks BIGINT NOT NULL, latency TEXT NOT NULL,
    PRIMARY KEY (source, endpoint, version, bucket));
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    token BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS agreement_stats (
    source TEXT NOT NULL, endpoint TEXT NOT NULL, version TEXT NOT NULL, bucket BIGINT NOT NULL,
    n BIGINT NOT NULL, total DOUBLE PRECISION NOT NULL, PRIMARY KEY (source, endpoint, version, bucket));
CREATE TABLE IF NOT EXISTS divergence_stats (
    source TEXT NOT NULL, endpoint TEXT NOT NULL, version TEXT NOT NULL, bucket BIGINT NOT NULL,
    n BIGINT NOT NULL, kl DOUBLE PRECISION NOT NULL, log_ratio DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (source, endpoint, version, bucket));
CREATE TABLE IF NOT EXISTS guard_stats (
    source TEXT NOT NULL, endpoint TEXT NOT NULL, version TEXT NOT NULL, bucket BIGINT NOT NULL,
    guarded BIGINT NOT NULL, cut BIGINT NOT NULL, PRIMARY KEY (source, endpoint, version, bucket));
CREATE TABLE IF NOT EXISTS class_stats (
    source TEXT NOT NULL, endpoint TEXT NOT NULL, version TEXT NOT NULL, bucket BIGINT NOT NULL,
    counts TEXT NOT NULL, PRIMARY KEY (source, endpoint, version, bucket));
CREATE TABLE IF NOT EXISTS rollouts (
    endpoint TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY, config TEXT NOT NULL, source TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, rate DOUBLE PRECISION NOT NULL,
    burst DOUBLE PRECISION NOT NULL, scopes TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL, revoked_at DOUBLE PRECISION, weight DOUBLE PRECISION NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS version_sizes (
    tag TEXT PRIMARY KEY, bytes BIGINT NOT NULL, measured_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS repository_pins (
    endpoint TEXT PRIMARY KEY, actor TEXT NOT NULL, pinned_at DOUBLE PRECISION NOT NULL);
"""
KEY_COLUMNS = "name, digest, rate, burst, scopes, created_at, created_by, revoked_at, weight"
# Key changes are audited under this endpoint name (the audit log's endpoint column is not null).
KEYS_AUDIT = "(api-keys)"


class ControlPlane(ABC):
    """Dialect-neutral queries; subclasses provide connections and placeholders."""

    serial = "INTEGER"

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction, committed on success and rolled back on error."""
        yield None

    def _q(self, sql: str) -> str:
        return sql

    def _exec(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur.execute(self._q(sql), params)
        return cur

    def init_schema(self) -> None:
        with self.transaction() as cur:
            self._schema_lock(cur)
            for statement in _SCHEMA.format(serial=self.serial).split(";"):
                if statement.strip():
                    self._exec(cur, statement)
            self._migrate(cur)

    def _schema_lock(self, cur: Any) -> None:  # noqa: B027 - a hook, empty by default
        """Serialize first boots (SQLite's BEGIN IMMEDIATE already does)."""

    def _migrate(self, cur: Any) -> None:
        """Columns added since a store was created (a control plane outlives upgrades)."""
        columns = {r[1] for r in self._exec(cur, "PRAGMA table_info(leases)").fetchall()}
        if "token" not in columns:
            self._exec(cur, "ALTER TABLE leases ADD COLUMN token BIGINT NOT NULL DEFAULT 0")
        columns = {r[1] for r in self._exec(cur, "PRAGMA table_info(api_keys)").fetchall()}
        if "weight" not in columns:
            self._exec(cur, "ALTER TABLE api_keys ADD COLUMN weight DOUBLE PRECISION NOT NULL DEFAULT 1")

    # --- endpoints -------------------------------------------------------------------
    def endpoints(self) -> dict[str, StoredEndpoint]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT name, config, source, created_at FROM endpoints").fetchall()
        return {r[0]: StoredEndpoint(r[0], json.loads(r[1]), r[2], float(r[3])) for r in rows}

    def put_endpoint(self, name: str, config: dict[str, Any], *, source: str, actor: str, action: str, reason: str,
                     create_only: bool) -> StoredEndpoint:
        """Create (or, unless `create_only`, replace) an endpoint and its audit entry in one transaction."""
        with self.transaction() as cur:
            self._lock_endpoints(cur)
            row = self._exec(cur, "SELECT config, created_at FROM endpoints WHERE name = ?", (name,)).fetchone()
            if row is not None and create_only:
                raise EndpointExists(f"endpoint {name!r} already exists")
            now = time.time()
            if row is None:
                self._exec(cur, "INSERT INTO endpoints (name, config, source, created_at) VALUES (?, ?, ?, ?)",
                           (name, json.dumps(config), source, now))
            else:
                self._exec(cur, "UPDATE endpoints SET config = ?, source = ?, created_at = ? WHERE name = ?",
                           (json.dumps(config), source, now, name))
            self._audit(cur, actor, action, name, _load(row[0]) if row else None, config, reason, {"source": source})
        return StoredEndpoint(name, config, source, now)

    def delete_endpoint(self, name: str, *, actor: str, reason: str) -> StoredEndpoint:
        """Remove an endpoint with its deployment history and rollout; refused while a rollout runs."""
        with self.transaction() as cur:
            self._lock_endpoints(cur)
            row = self._exec(cur, "SELECT config, source, created_at FROM endpoints WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            rollout = self._exec(cur, "SELECT state FROM rollouts WHERE endpoint = ?", (name,)).fetchone()
            if rollout is not None and json.loads(rollout[0]).get("status") in ("running", "paused"):
                raise EndpointBusy(f"a rollout is {json.loads(rollout[0])['status']} on {name}: abort it first")
            last = self._get(cur, name, None)
            for table, column in (("endpoints", "name"), ("deployments", "endpoint"), ("rollouts", "endpoint"),
                                  ("repository_pins", "endpoint")):
                self._exec(cur, f"DELETE FROM {table} WHERE {column} = ?", (name,))
            self._audit(cur, actor, "endpoint-delete", name, _load(row[0]), None, reason,
                        {"last_deployment": last.spec if last else None})
        return StoredEndpoint(name, json.loads(row[0]), row[1], float(row[2]))

    def _lock_endpoints(self, cur: Any) -> None:  # noqa: B027 - a hook, empty by default
        """Serialize endpoint writers (SQLite's BEGIN IMMEDIATE already does)."""

    # --- API keys ------------------------------------------------------------------
    def api_keys(self) -> list[StoredKey]:
        with self.transaction() as cur:
            rows = self._exec(cur, f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY name").fetchall()
        return [_key(r) for r in rows]

    def create_key(self, key: StoredKey, *, reason: str) -> StoredKey:
        """A new key, or a new secret for a revoked name; refused (KeyExists) while the name is live."""
        with self.transaction() as cur:
            self._lock_keys(cur)
            row = self._exec(cur, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ?", (key.name,)).fetchone()
            if row is not None and row[7] is None:
                raise KeyExists(f"an API key named {key.name!r} is live: revoke it first or pick another name")
            if row is not None:
                self._exec(cur, "DELETE FROM api_keys WHERE name = ?", (key.name,))
            self._exec(cur, f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (key.name, key.digest, key.rate, key.burst, json.dumps(key.scopes), key.created_at,
                        key.created_by, None, key.weight))
            self._audit(cur, key.created_by, "key-create", KEYS_AUDIT, None, key.public(), reason,
                        {"key": key.name})
        return key

    def update_key(self, name: str, changes: dict[str, Any], *, actor: str, reason: str,
                   revoke: bool = False) -> StoredKey:
        """Change a live key's rate, burst, scopes or weight, or revoke it (KeyError if there is no live key)."""
        with self.transaction() as cur:
            self._lock_keys(cur)
            row = self._exec(cur, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is None or row[7] is not None:
                raise KeyError(name)
            before = _key(row)
            after = StoredKey(**{**before.__dict__, **changes, "revoked_at": time.time() if revoke else None})
            self._exec(cur, "UPDATE api_keys SET rate = ?, burst = ?, scopes = ?, revoked_at = ?, weight = ? "
                       "WHERE name = ?", (after.rate, after.burst, json.dumps(after.scopes), after.revoked_at,
                                          after.weight, name))
            self._audit(cur, actor, "key-revoke" if revoke else "key-update", KEYS_AUDIT, before.public(),
                        after.public(), reason, {"key": name})
        return after

    def _lock_keys(self, cur: Any) -> None:  # noqa: B027 - a hook, empty by default
        """Serialize key writers (SQLite's BEGIN IMMEDIATE already does)."""

    # --- deployments ---------------------------------------------------------------
    def current_revisions(self) -> dict[str, int]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT endpoint, MAX(revision) FROM deployments GROUP BY endpoint").fetchall()
        return {endpoint: int(rev) for endpoint, rev in rows}

    def get_deployment(self, endpoint: str, revision: int | None = None) -> Revision | None:
        with self.transaction() as cur:
            return self._get(cur, endpoint, revision)

    def _get(self, cur: Any, endpoint: str, revision: int | None) -> Revision | None:
        sql = "SELECT endpoint, revision, spec, actor, action, reason, created_at FROM deployments WHERE endpoint = ?"
        if revision is None:
            row = self._exec(cur, sql + " ORDER BY revision DESC LIMIT 1", (endpoint,)).fetchone()
        else:
            row = self._exec(cur, sql + " AND revision = ?", (endpoint, revision)).fetchone()
        return _revision(row) if row else None

    def revisions(self, endpoint: str) -> list[Revision]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT endpoint, revision, spec, actor, action, reason, created_at "
                                   "FROM deployments WHERE endpoint = ? ORDER BY revision DESC", (endpoint,)).fetchall()
        return [_revision(r) for r in rows]

    def write_deployment(self, endpoint: str, spec: dict[str, Any], *, actor: str, action: str, reason: str,
                         expect_revision: int | None = None, details: dict[str, Any] | None = None,
                         rollout: RolloutUpdate | None = None, fence: Lease | None = None) -> Revision:
        """Append a revision and its audit entry atomically, with the endpoint's rollout state when `rollout`
        says so: a rollout and the split it routes never disagree, whatever crashes between them.

        With `expect_revision`, refuse (RevisionConflict) if the current revision differs;
        expect_revision=0 means "only if the endpoint has no deployment yet". With `fence`, refuse (Fenced)
        unless that lease is still held, by the database's clock.
        """
        with self.transaction() as cur:
            self._check_fence(cur, fence)
            self._lock_deployments(cur)
            before = self._get(cur, endpoint, None)
            current = before.revision if before else 0
            if expect_revision is not None and current != expect_revision:
                raise RevisionConflict(f"{endpoint} is at revision {current}, not {expect_revision}")
            now = time.time()
            self._exec(cur, "INSERT INTO deployments (endpoint, revision, spec, actor, action, reason, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (endpoint, current + 1, json.dumps(spec), actor, action, reason, now))
            self._audit(cur, actor, action, endpoint, before.spec if before else None, spec, reason,
                        {"revision": current + 1, **(details or {})})
            if rollout is not None:
                self._update_rollout(cur, endpoint, rollout)
        return Revision(endpoint, current + 1, spec, actor, action, reason, now)

    def _lock_deployments(self, cur: Any) -> None:  # noqa: B027 - a hook, empty by default
        """Serialize writers (SQLite's BEGIN IMMEDIATE already does)."""

    # --- audit ---------------------------------------------------------------------
    def append_audit(self, actor: str, action: str, endpoint: str, reason: str,
                     details: dict[str, Any] | None = None) -> None:
        with self.transaction() as cur:
            self._audit(cur, actor, action, endpoint, None, None, reason, details)

    def _audit(self, cur: Any, actor: str, action: str, endpoint: str, before: Any, after: Any, reason: str,
               details: dict[str, Any] | None) -> None:
        self._exec(cur, "INSERT INTO audit (ts, actor, action, endpoint, before, after, reason, details) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (time.time(), actor, action, endpoint, _dump(before), _dump(after), reason, _dump(details)))

    def audit(self, endpoint: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT id, ts, actor, action, endpoint, before, after, reason, details FROM audit"
        params: tuple[Any, ...] = ()
        if endpoint:
            sql, params = sql + " WHERE endpoint = ?", (endpoint,)
        with self.transaction() as cur:
            rows = self._exec(cur, sql + " ORDER BY id DESC LIMIT ?", (*params, limit)).fetchall()
        keys = ("id", "ts", "actor", "action", "endpoint", "before", "after", "reason", "details")
        return [{k: (_load(v) if k in ("before", "after", "details") else v) for k, v in zip(keys, r, strict=True)}
                for r in rows]

    # --- shared per-version stats ------------------------------------------------------
    def write_stats(self, source: str, rows: list[tuple[str, str, int, int, int, int, list[int]]],
                    agreement: list[tuple[str, str, int, int, float]] | None = None,
                    classes: list[tuple[str, str, int, list[int]]] | None = None,
                    divergence: list[tuple[str, str, int, int, float, float]] | None = None,
                    guarded: list[tuple[str, str, int, int, int]] | None = None) -> None:
        """Upsert this worker's cumulative counts per (endpoint, version, time bucket), its shadow
        comparisons (count and sum of agreement), its predicted-class counts, its token-level
        comparisons (count, sums of KL and log-prob ratio) and its guarded streams (checked, cut) in the
        same transaction."""
        if not rows and not agreement and not classes and not divergence and not guarded:
            return
        with self.transaction() as cur:
            for endpoint, version, bucket, checked, cut in guarded or []:
                self._exec(cur, "INSERT INTO guard_stats (source, endpoint, version, bucket, guarded, cut) "
                                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, endpoint, version, bucket) "
                                "DO UPDATE SET guarded = excluded.guarded, cut = excluded.cut",
                           (source, endpoint, version, bucket, checked, cut))
            for endpoint, version, bucket, n, kl, log_ratio in divergence or []:
                self._exec(cur, "INSERT INTO divergence_stats (source, endpoint, version, bucket, n, kl, log_ratio) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, endpoint, version, bucket) "
                                "DO UPDATE SET n = excluded.n, kl = excluded.kl, log_ratio = excluded.log_ratio",
                           (source, endpoint, version, bucket, n, kl, log_ratio))
            for endpoint, version, bucket, counts in classes or []:
                self._exec(cur, "INSERT INTO class_stats (source, endpoint, version, bucket, counts) "
                                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (source, endpoint, version, bucket) "
                                "DO UPDATE SET counts = excluded.counts",
                           (source, endpoint, version, bucket, json.dumps(counts)))
            for endpoint, version, bucket, n, total in agreement or []:
                self._exec(cur, "INSERT INTO agreement_stats (source, endpoint, version, bucket, n, total) "
                                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, endpoint, version, bucket) "
                                "DO UPDATE SET n = excluded.n, total = excluded.total",
                           (source, endpoint, version, bucket, n, total))
            for endpoint, version, bucket, requests, errors, fallbacks, latency in rows:
                self._exec(cur, "INSERT INTO version_stats (source, endpoint, version, bucket, requests, errors, "
                                "fallbacks, latency) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                                "ON CONFLICT (source, endpoint, version, bucket) DO UPDATE SET "
                                "requests = excluded.requests, errors = excluded.errors, "
                                "fallbacks = excluded.fallbacks, latency = excluded.latency",
                           (source, endpoint, version, bucket, requests, errors, fallbacks, json.dumps(latency)))

    def read_stats(self, since_bucket: int, endpoint: str | None = None) -> list[tuple[Any, ...]]:
        sql = ("SELECT endpoint, version, bucket, requests, errors, fallbacks, latency FROM version_stats "
               "WHERE bucket >= ?")
        params: tuple[Any, ...] = (since_bucket,)
        if endpoint:
            sql, params = sql + " AND endpoint = ?", (*params, endpoint)
        with self.transaction() as cur:
            return [(*r[:6], json.loads(r[6])) for r in self._exec(cur, sql, params).fetchall()]

    def _sums(self, table: str, columns: tuple[str, ...], since_bucket: int, endpoint: str,
              ) -> dict[str, tuple[Any, ...]]:
        """Version -> each column summed over workers and buckets since `since_bucket` (names are ours, not
        a caller's: they are never user input)."""
        sums = ", ".join(f"SUM({c})" for c in columns)
        with self.transaction() as cur:
            rows = self._exec(cur, f"SELECT version, {sums} FROM {table} WHERE bucket >= ? AND endpoint = ? "
                                   "GROUP BY version", (since_bucket, endpoint)).fetchall()
        return {r[0]: tuple(r[1:]) for r in rows}

    def read_agreement(self, since_bucket: int, endpoint: str) -> dict[str, tuple[int, float]]:
        """Version -> (comparisons, sum of agreement) since a bucket."""
        return {v: (int(n), float(total))
                for v, (n, total) in self._sums("agreement_stats", ("n", "total"), since_bucket, endpoint).items()}

    def read_divergence(self, since_bucket: int, endpoint: str) -> dict[str, tuple[int, float, float]]:
        """Version -> (token-level comparisons, sum of their KL, sum of their log-prob ratio) since a bucket."""
        sums = self._sums("divergence_stats", ("n", "kl", "log_ratio"), since_bucket, endpoint)
        return {v: (int(n), float(kl), float(ratio)) for v, (n, kl, ratio) in sums.items()}

    def read_guarded(self, since_bucket: int, endpoint: str) -> dict[str, tuple[int, int]]:
        """Version -> (streams whose output guardrails checked, streams they cut) since a bucket."""
        sums = self._sums("guard_stats", ("guarded", "cut"), since_bucket, endpoint)
        return {v: (int(checked), int(cut)) for v, (checked, cut) in sums.items()}

    def read_classes(self, since_bucket: int, endpoint: str) -> dict[str, list[int]]:
        """Version -> predictions per class since a bucket, summed over workers and buckets."""
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT version, counts FROM class_stats WHERE bucket >= ? AND endpoint = ?",
                              (since_bucket, endpoint)).fetchall()
        out: dict[str, list[int]] = {}
        for version, counts in rows:
            out[version] = add_counts(out.get(version, []), json.loads(counts))
        return out

    def prune_stats(self, before_bucket: int) -> None:
        with self.transaction() as cur:
            self._exec(cur, "DELETE FROM version_stats WHERE bucket < ?", (before_bucket,))
            self._exec(cur, "DELETE FROM agreement_stats WHERE bucket < ?", (before_bucket,))
            self._exec(cur, "DELETE FROM class_stats WHERE bucket < ?", (before_bucket,))
            self._exec(cur, "DELETE FROM divergence_stats WHERE bucket < ?", (before_bucket,))
            self._exec(cur, "DELETE FROM guard_stats WHERE bucket < ?", (before_bucket,))

    # --- rollouts (one per endpoint; the latest, finished or not) -----------------------
    def put_rollout(self, endpoint: str, state: dict[str, Any], audit: tuple[str, str, str, Any] | None = None,
                    ) -> None:
        """Write the rollout's state unconditionally (its version still advances), with an audit entry."""
        self.update_rollout(endpoint, lambda _stored: (state, audit))

    def update_rollout(self, endpoint: str, update: RolloutUpdate, fence: Lease | None = None) -> dict[str, Any] | None:
        """Read, change and write the rollout's state in one transaction (compare-and-set by `update`,
        which sees what is stored now); returns the state written, or None if `update` left it."""
        with self.transaction() as cur:
            self._check_fence(cur, fence)
            return self._update_rollout(cur, endpoint, update)

    def _update_rollout(self, cur: Any, endpoint: str, update: RolloutUpdate) -> dict[str, Any] | None:
        row = self._exec(cur, "SELECT state FROM rollouts WHERE endpoint = ?" + self._for_update,
                         (endpoint,)).fetchone()
        stored = None if row is None else dict(json.loads(row[0]))
        state, audit = update(stored)
        if state is None:
            return None
        # The version every compare-and-set checks: it moves on with each write, whoever makes it.
        state = {**state, "version": int((stored or {}).get("version", 0)) + 1}
        self._exec(cur, "INSERT INTO rollouts (endpoint, state, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (endpoint) DO UPDATE SET state = excluded.state, "
                        "updated_at = excluded.updated_at", (endpoint, json.dumps(state), time.time()))
        if audit is not None:
            actor, action, reason, details = audit
            self._audit(cur, actor, action, endpoint, None, None, reason, details)
        return state

    def get_rollout(self, endpoint: str) -> dict[str, Any] | None:
        with self.transaction() as cur:
            row = self._exec(cur, "SELECT state FROM rollouts WHERE endpoint = ?", (endpoint,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def rollouts(self) -> list[dict[str, Any]]:
        with self.transaction() as cur:
            rows = self._exec(cur, "SELECT state FROM rollouts").fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    # --- leases ----------------------------------------------------------------------
    # Expiry is judged by the database's clock, never a replica's, so clock skew cannot let two act.
    _now_sql = "(julianday('now') - 2440587.5) * 86400.0"
    _for_update = ""

    def _db_now(self, cur: Any) -> float:
        return float(self._exec(cur, f"SELECT {self._now_sql}").fetchone()[0])

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take or renew `name` for `holder` unless someone else holds an unexpired lease. A new holder
        (or the same one after its lease lapsed) gets a new token, which fences off its older writes."""
        with self.transaction() as cur:
            now = self._db_now(cur)
            # One conditional upsert, so two replicas racing for a free lease cannot both win.
            self._exec(cur, "INSERT INTO leases (name, holder, expires_at, token) VALUES (?, ?, ?, 1) "
                            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                            "expires_at = excluded.expires_at, token = CASE WHEN leases.holder = excluded.holder "
                            "AND leases.expires_at >= ? THEN leases.token ELSE leases.token + 1 END "
                            "WHERE leases.holder = excluded.holder OR leases.expires_at < ?",
                       (name, holder, now + ttl_s, now, now))
            row = self._exec(cur, "SELECT holder, token FROM leases WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] != holder:
            return None
        token = int(row[1])
        return Lease(name, holder, token)

    def _check_fence(self, cur: Any, fence: Lease | None) -> None:
        if fence is None:
            return
        row = self._exec(cur, "SELECT holder, expires_at, token FROM leases WHERE name = ?" + self._for_update,
                         (fence.name,)).fetchone()
        if row is None or row[0] != fence.holder or int(row[2]) != fence.token:
            raise Fenced(f"lease {fence.name} is no longer held by {fence.holder} (token {fence.token})")
        if float(row[1]) < self._db_now(cur):
            raise Fenced(f"lease {fence.name} of {fence.holder} expired")

    def release_lease(self, name: str, holder: str) -> None:
        with self.transaction() as cur:
            self._exec(cur, "DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    # --- many models: sizes and the repository's loads ----------------------------------
    def put_version_size(self, tag: str, nbytes: int) -> None:
        """A version's size, measured at its first load anywhere; the first measurement stays."""
        with self.transaction() as cur:
            self._exec(cur, "INSERT INTO version_sizes (tag, bytes, measured_at) VALUES (?, ?, ?) "
                            "ON CONFLICT (tag) DO NOTHING", (tag, nbytes, time.time()))

    def residency(self) -> tuple[dict[str, int], set[str]]:
        """Every measured version size, and the endpoints loaded through the repository API."""
        with self.transaction() as cur:
            sizes = self._exec(cur, "SELECT tag, bytes FROM version_sizes").fetchall()
            pinned = self._exec(cur, "SELECT endpoint FROM repository_pins").fetchall()
        return {r[0]: int(r[1]) for r in sizes}, {r[0] for r in pinned}

    def pin_endpoint(self, name: str, pinned: bool, *, actor: str, reason: str) -> bool:
        """Load (`pinned`) or unload an endpoint through the repository API, audited; whether it changed."""
        with self.transaction() as cur:
            had = self._exec(cur, "SELECT 1 FROM repository_pins WHERE endpoint = ?", (name,)).fetchone() is not None
            if had == pinned:
                return False
            if pinned:
                self._exec(cur, "INSERT INTO repository_pins (endpoint, actor, pinned_at) VALUES (?, ?, ?)",
                           (name, actor, time.time()))
            else:
                self._exec(cur, "DELETE FROM repository_pins WHERE endpoint = ?", (name,))
            self._audit(cur, actor, "repository-load" if pinned else "repository-unload", name,
                        {"pinned": had}, {"pinned": pinned}, reason, None)
        return True

    # --- the fleet -------------------------------------------------------------------
    def heartbeat(self, worker_id: str, ttl_s: float) -> int:
        """Say this worker is alive, forget workers silent for `ttl_s` (by the database's clock), and
        return how many are alive: what a key's rate is shared among."""
        with self.transaction() as cur:
            now = self._db_now(cur)
            self._exec(cur, "INSERT INTO workers (worker_id, seen_at) VALUES (?, ?) ON CONFLICT (worker_id) "
                            "DO UPDATE SET seen_at = excluded.seen_at", (worker_id, now))
            self._exec(cur, "DELETE FROM workers WHERE seen_at < ?", (now - ttl_s,))
            return int(self._exec(cur, "SELECT COUNT(*) FROM workers").fetchone()[0])

    def leave(self, worker_id: str) -> None:
        """A worker stopping: the others take its share at their next heartbeat, not after the TTL."""
        with self.transaction() as cur:
            self._exec(cur, "DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def change_stamp(self) -> Any:
        """Something that changes whenever another writer commits, if the store can tell cheaply; None
        when it cannot (then pollers must query). Lets idle workers skip a poll's queries."""
        return None

    def close(self) -> None:  # noqa: B027 - a hook, empty by default
        """Release connections."""


class SQLiteControlPlane(ControlPlane):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()  # one connection per thread: opening one costs more than most queries
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        self.init_schema()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        try:
            conn = self._connection()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.cursor()
            try:
                yield cur
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._drop_connection()  # a broken or locked-out connection is not reused
            raise StoreUnavailable(f"control plane {self.path}: {exc}") from exc

    def change_stamp(self) -> Any:
        """In WAL mode every commit grows or rewrites the -wal file: its size and mtime (with the
        database file's, for checkpoints) change with every write, by any process."""
        stamp: list[tuple[int, int] | None] = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(f"{self.path}{suffix}")
                stamp.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                stamp.append(None)
        return tuple(stamp)

    def close(self) -> None:
        self._drop_connection()


class PostgresControlPlane(ControlPlane):
    serial = "BIGSERIAL"

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._conn: Any = None
        self._lock = threading.Lock()
        self.init_schema()

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            # statement_timeout: the server gives up a statement stuck on a lock; connect_timeout: a server
            # that does not answer. A server that is stopped outright is the caller's timeout (Engine.db).
            self._conn = psycopg.connect(self.url, connect_timeout=max(1, min(10, round(self.timeout_s))),
                                         options=f"-c statement_timeout={int(self.timeout_s * 1000)}")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        import psycopg

        # One connection, one transaction at a time. A call stuck on a hung database holds it: later calls
        # give up after the timeout instead of queueing behind it for ever.
        if not self._lock.acquire(timeout=self.timeout_s):
            raise StoreUnavailable("control-plane database busy: an earlier call has not returned (is it hung?)")
        try:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError as exc:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise StoreUnavailable(f"control-plane database unreachable: {str(exc).strip()[:200]}") from exc
        finally:
            self._lock.release()

    _now_sql = "EXTRACT(EPOCH FROM clock_timestamp())"
    _for_update = " FOR UPDATE"

    def _migrate(self, cur: Any) -> None:
        cur.execute("ALTER TABLE leases ADD COLUMN IF NOT EXISTS token BIGINT NOT NULL DEFAULT 0")
        cur.execute("ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS weight DOUBLE PRECISION NOT NULL DEFAULT 1")

    def _schema_lock(self, cur: Any) -> None:
        # Two replicas creating the tables at once can collide in the catalog (a unique violation on
        # pg_type): the first boot takes a transaction-scoped advisory lock, the other waits for it.
        cur.execute("SELECT pg_advisory_xact_lock(7294317)")

    def _lock_deployments(self, cur: Any) -> None:
        # One writer at a time: revision numbers must not collide across replicas.
        cur.execute("LOCK TABLE deployments IN SHARE ROW EXCLUSIVE MODE")

    def _lock_endpoints(self, cur: Any) -> None:
        cur.execute("LOCK TABLE endpoints IN SHARE ROW EXCLUSIVE MODE")

    def _lock_keys(self, cur: Any) -> None:
        cur.execute("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def open_store(state_dir: Path, db_url: str | None, timeout_s: float = 5.0) -> ControlPlane:
    if db_url:
        return PostgresControlPlane(db_url, timeout_s)
    return SQLiteControlPlane(state_dir / "control.db")


def _revision(row: tuple[Any, ...]) -> Revision:
    endpoint, revision, spec, actor, action, reason, created_at = row
    return Revision(endpoint, int(revision), json.loads(spec), actor, action, reason, float(created_at))


def _key(row: tuple[Any, ...]) -> StoredKey:
    name, digest, rate, burst, scopes, created_at, created_by, revoked_at, weight = row
    return StoredKey(name, digest, float(rate), float(burst), json.loads(scopes), float(created_at), created_by,
                     None if revoked_at is None else float(revoked_at), float(weight))


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _load(value: str | None) -> Any:
    return None if value is None else json.loads(value)
