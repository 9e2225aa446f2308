"""A worker under the worst request each limit allows, with ordinary requests beside it.

For each hostile load: the worker's peak RSS and the CPU seconds it spent, the answers the hostile
requests got, and whether ordinary one-row digits requests sent alongside all got 200 within the p99
they had alone. One `bentoml serve` worker on the default models (`make models`), default limits.

    python bench/hostile.py        # writes docs/benchmarks-hostile.md and bench/results/hostile.json
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.harness import cpu_seconds, tree  # noqa: E402
from bench.serving import TOKEN, pick_versions  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34
ORDINARY_S = 8.0


def digit_png(side: int, seed: int) -> bytes:
    """A side x side white image with a dark stroke: decodes to a digit, compresses to a few KB."""
    rng = np.random.default_rng(seed)
    img = np.full((side, side), 255, np.uint8)
    x = rng.integers(side // 4, side // 2)
    img[side // 5: side * 4 // 5, x:x + max(2, side // 20)] = 0
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="PNG", optimize=True)
    return out.getvalue()


def chunked_upload(url: str, port: int) -> str:
    head = ("POST /v1/digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(320):  # 20 MB under a 1 MB limit
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = sock.recv(4096)
    return reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/1.1") else "closed"


def stalled_bodies(url: str, port: int, count: int = 300) -> str:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(b"POST /v1/digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": [")
        socks.append(sock)
    statuses: Counter[str] = Counter()
    for sock in socks:
        reply = sock.recv(4096)
        statuses[reply.split(b" ")[1].decode() if reply.startswith(b"HTTP/1.1") else "closed"] += 1
        sock.close()
    return ", ".join(f"{n} x {s}" for s, n in statuses.items())


def maximal_images(url: str, port: int) -> str:
    """As many of the largest digit images as one request may carry: limits.max_request_pixels over
    limits.max_image_pixels (32 images of 1000 x 1000 with the defaults and the digits endpoint's limit)."""
    files = [("image", (f"{i}.png", digit_png(1000, i), "image/png")) for i in range(32)]
    r = httpx.post(f"{url}/v1/digits/predict", files=files, timeout=120)
    return str(r.status_code)


def long_texts(url: str, port: int) -> str:
    """64 texts of 2,000 characters over OIP (the most tokens one request may carry)."""
    words = " ".join(["serving"] * 300)[:2000]
    body = {"inputs": [{"name": "text", "shape": [64], "datatype": "BYTES", "data": [words] * 64}]}
    return str(httpx.post(f"{url}/v2/models/minilm/infer", json=body, timeout=120).status_code)


def random_paths(url: str, port: int) -> str:
    with httpx.Client(base_url=url, timeout=30) as c:
        codes = Counter(c.get(f"/{uuid.uuid4().hex}").status_code for _ in range(2000))
    lines = len(httpx.get(f"{url}/metrics", timeout=30).text.splitlines())
    return ", ".join(f"{n} x {s}" for s, n in codes.items()) + f"; /metrics {lines} lines"


LOADS: dict[str, tuple[str, Callable[[str, int], str], int]] = {
    # name: (what it is, one hostile request, how many at once)
    "chunked-20MB": ("a 20 MB chunked body under the 1 MB limit", chunked_upload, 4),
    "stalled-300": ("300 bodies that stop after their first bytes (408 after limits.body_timeout_s)",
                    stalled_bodies, 1),
    "max-images": ("32 digit images of 1000 x 1000 in one multipart request", maximal_images, 2),
    "long-texts": ("64 texts of 2,000 characters over OIP", long_texts, 2),
    "random-paths": ("2,000 requests to random paths", random_paths, 1),
}


def ordinary(url: str, until: float) -> list[tuple[int, float]]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            r = c.post("/v1/digits/predict", json={"inputs": [ROW]})
            out.append((r.status_code, (time.perf_counter() - t0) * 1000))
    return out


def p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99)) if latencies else float("nan")


def worker_rss_mb(pid: int) -> float:
    return max((p.memory_info().rss for p in tree(pid) if p.is_running()), default=0) / 2**20


def measure(server: Served, name: str) -> dict[str, Any]:
    what, hostile, copies = LOADS[name]
    peak, stop = [worker_rss_mb(server.proc.pid)], threading.Event()
    start_rss = peak[0]

    def sample() -> None:
        while not stop.is_set():
            peak.append(worker_rss_mb(server.proc.pid))
            time.sleep(0.05)

    answers: list[str] = []
    cpu0 = cpu_seconds(server.proc.pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    side: list[tuple[int, float]] = []
    beside = threading.Thread(target=lambda: side.extend(ordinary(server.url, time.monotonic() + ORDINARY_S)))
    beside.start()
    workers = [threading.Thread(target=lambda: answers.append(hostile(server.url, server.port)))
               for _ in range(copies)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    hostile_s = time.monotonic() - t0
    beside.join()
    stop.set()
    sampler.join()
    cpu = cpu_seconds(server.proc.pid) - cpu0
    return {"load": name, "what": what, "copies": copies, "answers": answers, "hostile_s": round(hostile_s, 2),
            "cpu_s": round(cpu, 2), "rss_start_mb": round(start_rss, 1), "rss_peak_mb": round(max(peak), 1),
            "ordinary": len(side), "ordinary_non200": sum(1 for s, _ in side if s != 200),
            "ordinary_p99_ms": round(p99([ms for s, ms in side if s == 200]), 2)}


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="switchyard-hostile-"))
    versions = {f: pick_versions(f)["stable"] for f in ("digits", "minilm")}
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state, admin_token=TOKEN,
                    default_models=json.dumps(versions), body_timeout_s="5")
    server = Served(env, log_dir=state)
    rows = []
    try:
        server.wait_ready()
        cpu0 = cpu_seconds(server.proc.pid)
        alone = ordinary(server.url, time.monotonic() + ORDINARY_S)
        alone_cpu = cpu_seconds(server.proc.pid) - cpu0
        base_p99 = p99([ms for s, ms in alone if s == 200])
        for name in LOADS:
            row = measure(server, name)
            row["within_p99"] = row["ordinary_non200"] == 0 and row["ordinary_p99_ms"] <= base_p99
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.kill()
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "hostile.json").write_text(json.dumps({"versions": versions, "ordinary_alone_p99_ms": base_p99,
                                                      "ordinary_alone_cpu_s": alone_cpu, "rows": rows},
                                                     indent=1) + "\n")
    lines = ["# A worker under hostile requests", "",
             f"Written by `python bench/hostile.py`: one `bentoml serve` worker, default limits except "
             f"`SWITCHYARD_BODY_TIMEOUT_S=5`, versions {versions}. Beside each load, one client sends one-row "
             f"digits requests back to back for {ORDINARY_S:g} s; alone they had a p99 of {base_p99:.2f} ms and "
             f"the worker spent {alone_cpu:.2f} CPU s on them ({len(alone)} requests). The CPU column is the "
             "worker's over each load's window, ordinary requests included; RSS is the largest worker process's, "
             "sampled every 50 ms, and loads run one after another on the same worker.", "",
             "| load | at once | hostile answers | worker CPU s | RSS start → peak MB | ordinary requests "
             "| non-200 | ordinary p99 ms | within p99 alone |", "|---|---:|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        answers = ", ".join(f"{n} x {a}" for a, n in Counter(r["answers"]).items())
        lines.append(f"| {r['what']} | {r['copies']} | {answers} | {r['cpu_s']} | {r['rss_start_mb']} → "
                     f"{r['rss_peak_mb']} | {r['ordinary']} | {r['ordinary_non200']} | {r['ordinary_p99_ms']} | "
                     f"{'yes' if r['within_p99'] else 'no'} |")
    (ROOT / "docs" / "benchmarks-hostile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
