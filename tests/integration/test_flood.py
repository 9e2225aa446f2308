"""A flood on a real `bentoml serve`: 512 connections from wrk, well over 10,000 requests. Memory stays
within 1.5x of idle plus the configured in-flight bound, and nothing fails at the socket."""

from __future__ import annotations

import json
import threading

import pytest

from bench.harness import rss_mb, settle
from tests.servers import Served, wrk_until

pytestmark = pytest.mark.integration
IN_FLIGHT_BOUND_MB = 64  # SWITCHYARD_MAX_INFLIGHT_BYTES's default


def test_512_connections_leave_memory_bounded_and_no_socket_errors(single_worker: Served) -> None:
    pid = single_worker.proc.pid
    settle(pid)
    idle = rss_mb(pid)
    peak, stop = [idle], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak.append(rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    body = json.dumps({"inputs": [[float(i % 17) for i in range(64)]]})
    try:
        requests, non2xx, socket_errors = wrk_until(f"{single_worker.url}/v1/digits/predict", [body], 512,
                                                    10_000, pid)
    finally:
        stop.set()
        sampler.join()
    print(f"{requests} requests at 512 connections, non-2xx {non2xx}, socket errors {socket_errors}; "
          f"RSS idle {idle:.0f} MB, peak {max(peak):.0f} MB")
    assert socket_errors == 0 and non2xx == 0
    assert max(peak) <= 1.5 * idle + IN_FLIGHT_BOUND_MB
