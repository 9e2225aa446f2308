"""The payload log: rotation and the bound on disk under 10,000 entries, redaction, and reading it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bentos.dataplane.payloads import PREFIX, PayloadLog, entry, tail
from bentos.request_context import REQUEST_ID
from bentos.settings import PayloadLogSettings


def log_in(tmp_path: Path, **bounds: float) -> PayloadLog:
    # A queue that takes all 10,000 at once: this test is about the files, not about dropping.
    return PayloadLog(PayloadLogSettings(sample=1.0, dir=tmp_path / "payloads", **bounds), capacity=20_000)


def test_files_rotate_and_the_directory_stays_within_its_bound(tmp_path: Path) -> None:
    log = log_in(tmp_path, max_file_mb=0.05, max_total_mb=0.3)
    for i in range(10_000):
        log.put(entry(endpoint="digits", redacted=False, version="m:1", route="stable", latency_ms=1.0, key="",
                      protocol="v1", items=[[float(i)] * 8], response=[{"label": i % 10}]))
    log.close()
    files = list(log.dir.glob(f"{PREFIX}*.jsonl"))
    total = sum(p.stat().st_size for p in files)
    assert len(files) > 2  # it rotated
    assert total <= 0.3 * 2**20 + 1024, total  # within the bound, give or take one entry
    assert log.dropped == 0
    newest = tail(log.dir, "digits", None, 5)
    assert [e["inputs"][0][0] for e in newest] == [9999.0, 9998.0, 9997.0, 9996.0, 9995.0]


def test_redaction_leaves_only_hashes_on_disk(tmp_path: Path) -> None:
    log = log_in(tmp_path)
    secret = "my card number is 4111 1111 1111 1111"
    token = REQUEST_ID.set("req-42")
    try:
        log.put(entry(endpoint="reviews", redacted=True, version="m:1", route="stable", latency_ms=2.0, key="shop",
                      protocol="v1", items=[secret, np.arange(3)], response=[{"label": "x"}]))
    finally:
        REQUEST_ID.reset(token)
    log.close()
    text = "".join(p.read_text() for p in log.dir.glob("*.jsonl"))
    assert "4111" not in text and "card" not in text
    (kept,) = [json.loads(line) for line in text.splitlines()]
    assert kept["request_id"] == "req-42" and kept["key"] == "shop" and kept["outputs"] == [{"label": "x"}]
    assert all(set(i) == {"sha256"} and len(i["sha256"]) == 64 for i in kept["inputs"])


def test_tail_filters_by_endpoint_and_version(tmp_path: Path) -> None:
    log = log_in(tmp_path)
    for version in ("m:1", "m:2", "m:1"):
        log.put(entry(endpoint="digits", redacted=False, version=version, route="canary", latency_ms=1.0, key="",
                      protocol="v1", items=[[1.0]], response=[{"label": 1}]))
    log.put(entry(endpoint="minilm", redacted=False, version="e:1", route="stable", latency_ms=1.0, key="",
                      protocol="v1", items=["hi"], response=[[0.1]]))
    log.close()
    assert [e["version"] for e in tail(log.dir, "digits", "m:1", 10)] == ["m:1", "m:1"]
    assert len(tail(log.dir, None, None, 10)) == 4 and len(tail(log.dir, None, None, 2)) == 2


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    log = PayloadLog(PayloadLogSettings(sample=1.0, dir=tmp_path / "p"), capacity=1)
    for _ in range(1000):
        log.put({"ts": 0})
    log.close()
    assert log.dropped > 0
