"""Client threads that keep posting digits while a rollout runs, and the inputs a faulty version fails on."""

from __future__ import annotations

import threading
from collections import Counter

import httpx

from tests.servers import Served

# Rows with zero pixels (most real digits) and rows without: the faulty version fails on the first kind.
WITH_ZERO = [0.0] * 20 + [16.0] * 10 + [4.0] * 34
NO_ZERO = [1.0] * 20 + [16.0] * 10 + [4.0] * 34
# The CNN, the "good" canary, is slower than the MLP by nature: on 2 shared cores under test load its p95
# has reached 2x the MLP's, which the default latency_ratio (1.5) rightly rejects. These tests are about
# errors and the controller, so they allow 4x.
FAST = {"min_requests": 60, "min_seconds": 1, "interval_s": 0.5, "latency_ratio": 4.0}


# gRPC statuses as the HTTP status the same error gets (bentos/api/problems.py), so counts compare.
GRPC_AS_HTTP = {"StatusCode.INVALID_ARGUMENT": 400, "StatusCode.RESOURCE_EXHAUSTED": 429,
                "StatusCode.UNAVAILABLE": 503, "StatusCode.INTERNAL": 500, "StatusCode.NOT_FOUND": 404,
                "StatusCode.DEADLINE_EXCEEDED": 504}


class Traffic:
    """Client threads posting digits until stopped; counts status codes and versions. With `grpc` (host:port)
    they call ModelInfer with Triton's gRPC client instead, and count a gRPC error as its HTTP twin."""

    def __init__(self, url: str, rows: list[list[float]], threads: int = 3, grpc: str | None = None) -> None:
        self.url, self.rows, self.grpc = url, rows, grpc
        self.status: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # transport errors by kind, to say what went wrong
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        if self.grpc is not None:
            self._run_grpc(seed, self.grpc)
            return
        with httpx.Client(base_url=self.url, timeout=30) as c:
            i = seed
            while not self._stop.is_set():
                try:
                    r = c.post("/v1/digits/predict", json={"inputs": [self.rows[i % len(self.rows)]]})
                except httpx.TransportError as e:  # a server that was killed on purpose
                    self.status[0] += 1
                    self.errors[f"{type(e).__name__}: {e}"] += 1
                    self._stop.wait(0.1)
                    continue
                self.status[r.status_code] += 1
                self.versions[r.headers.get("x-model-version", "?")] += 1
                i += 1

    def _run_grpc(self, seed: int, target: str) -> None:
        import numpy as np
        import tritonclient.grpc as tc
        from tritonclient.utils import InferenceServerException

        client, i = tc.InferenceServerClient(target), seed
        try:
            while not self._stop.is_set():
                tensor = tc.InferInput("pixels", [1, 64], "FP32")
                tensor.set_data_from_numpy(np.array([self.rows[i % len(self.rows)]], np.float32))
                try:
                    answer = client.infer("digits", [tensor], client_timeout=30)
                except InferenceServerException as e:
                    self.status[GRPC_AS_HTTP.get(str(e.status()), 0)] += 1
                    self.errors[f"{e.status()}: {e.message()}"] += 1
                    continue
                self.status[200] += 1
                self.versions[answer.get_response().model_version] += 1
                i += 1
        finally:
            client.close()

    def report(self, server: Served) -> str:
        """For a failed assertion: what the clients saw, and the end of the server's log."""
        return f"status {dict(self.status)}; transport errors {dict(self.errors)}; log:\n{server.log_text()[-3000:]}"

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
