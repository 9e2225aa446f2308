"""Sampled payload logging: what a version was asked and what it answered, as JSON Lines on disk.

Off unless SWITCHYARD_PAYLOAD_LOG is set. Serving never waits on the disk: entries go through a bounded
queue to a writer thread, and are dropped (and counted) when it is full. Files rotate by size, and the
oldest are deleted so the directory never holds more than its bound, whichever worker wrote them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

from bentos.settings import PayloadLogSettings

PREFIX = "payloads-"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def redact(items: list[Any]) -> list[dict[str, str]]:
    """Inputs as hashes only: equal inputs can still be matched, none can be read back."""
    return [{"sha256": digest(item)} for item in items]


def jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def entry(*, endpoint: str, redacted: bool, version: str, route: str, latency_ms: float, key: str, protocol: str,
          items: list[Any], response: Any) -> dict[str, Any]:
    """One logged exchange; with `redacted`, inputs are hashes only."""
    from bentos.request_context import request_id

    inputs = jsonable(items)
    return {"ts": time.time(), "request_id": request_id(), "endpoint": endpoint, "version": version, "route": route,
            "latency_ms": round(latency_ms, 3), "key": key, "protocol": protocol,
            "inputs": redact(inputs) if redacted else inputs, "outputs": jsonable(response)}


class PayloadLog:
    """One per worker; files are named by pid so workers never write to the same file."""

    def __init__(self, settings: PayloadLogSettings, capacity: int = 10_000) -> None:
        self.settings = settings
        self.dir = settings.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_file = int(settings.max_file_mb * 2**20)
        self.max_total = int(settings.max_total_mb * 2**20)
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._path = self.dir / f"{PREFIX}{os.getpid()}.jsonl"
        self._thread = threading.Thread(target=self._write_loop, name="payload-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        return random.random() < self.settings.sample

    def put(self, entry: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _write_loop(self) -> None:
        out = self._path.open("a", encoding="utf-8")
        try:
            while (entry := self._queue.get()) is not None:
                out.write(json.dumps(entry, default=str) + "\n")
                if self._queue.empty():
                    out.flush()
                if out.tell() >= self.max_file:
                    out.close()
                    self._path.rename(self.dir / f"{PREFIX}{os.getpid()}-{time.time_ns()}.jsonl")
                    self._prune()
                    out = self._path.open("a", encoding="utf-8")
        finally:
            out.close()

    def _prune(self) -> None:
        """Delete the oldest rotated files (any worker's) until the directory fits its bound; the files
        being written count too, so the bound holds with room for one file per worker."""
        files = sorted(self.dir.glob(f"{PREFIX}*.jsonl"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total + self.max_file <= self.max_total:
                break
            if path.name.count("-") < 2:  # a worker's current file
                continue
            with contextlib.suppress(FileNotFoundError):
                total -= path.stat().st_size
                path.unlink()


def tail(directory: Path, endpoint: str | None, version: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` entries across this host's files, newest first, filtered."""
    out: list[dict[str, Any]] = []
    files = sorted(directory.glob(f"{PREFIX}*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            lines = path.read_text(encoding="utf-8").splitlines()
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written
            if (endpoint and entry.get("endpoint") != endpoint) or (version and entry.get("version") != version):
                continue
            out.append(entry)
            if len(out) >= limit:
                return sorted(out, key=lambda e: e.get("ts", 0), reverse=True)
    return sorted(out, key=lambda e: e.get("ts", 0), reverse=True)
