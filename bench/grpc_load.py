"""A small gRPC load driver (grpc.aio): `connections` clients, each on its own channel, call ModelInfer back to
back with pre-serialized requests for `seconds`, and print one JSON line: requests, errors, latency
percentiles, and the driver's own CPU (so a reader can tell whether the client was the limit).

    python bench/grpc_load.py --target 127.0.0.1:3001 --bodies reqs.bin --body-bytes 300 --connections 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import psutil

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def client(channel: grpc.aio.Channel, bodies: list[bytes], start: int, until: float,
                 latencies: list[float], errors: dict[str, int]) -> None:
    call = channel.unary_unary(METHOD)  # bytes in, bytes out: no serialization in the loop
    i = start
    while time.monotonic() < until:
        began = time.perf_counter()
        try:
            await call(bodies[i % len(bodies)], timeout=30)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        else:
            latencies.append(time.perf_counter() - began)
        i += 1


async def run(target: str, bodies: list[bytes], connections: int, seconds: float) -> dict[str, object]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(connections)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    me = psutil.Process()
    cpu0, began = sum(me.cpu_times()[:2]), time.monotonic()
    await asyncio.gather(*(client(ch, bodies, i, began + seconds, latencies, errors)
                           for i, ch in enumerate(channels)))
    elapsed = time.monotonic() - began
    cpu = sum(me.cpu_times()[:2]) - cpu0
    for ch in channels:
        await ch.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else 0.0

    return {"ok": len(latencies), "errors": errors, "duration_s": elapsed, "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "driver_cpu_pct": 100 * cpu / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--bodies", required=True, help="a file of fixed-size serialized ModelInferRequests")
    ap.add_argument("--body-bytes", type=int, required=True)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    raw = Path(args.bodies).read_bytes()
    bodies = [raw[i:i + args.body_bytes] for i in range(0, len(raw), args.body_bytes)]
    print(json.dumps(asyncio.run(run(args.target, bodies, args.connections, args.seconds))))


if __name__ == "__main__":
    main()
