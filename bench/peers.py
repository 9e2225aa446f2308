"""The peer servers: how to start each, and which Python module it needs installed."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import wait_http
from tests.servers import free_port, isolated_home

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Peer:
    name: str
    argv: tuple[str, ...]  # "{port}" is replaced
    needs: str  # importable module; a peer whose module is missing is skipped
    ready_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.needs) is not None


def _uvicorn(target: str, *extra: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}", "--no-access-log",
            "--log-level", "warning", *extra)


def _bentoml(budget_ms: int) -> Peer:
    return Peer(f"stock BentoML max_latency_ms={budget_ms}",
                (sys.executable, "-m", "bentoml", "serve", "bench.servers.stock_bentoml:Stock", "--host",
                 "127.0.0.1", "--port", "{port}"), "bentoml", "/readyz", {"BENCH_MAX_LATENCY_MS": str(budget_ms)})


def _litserve(timeout_s: float) -> Peer:
    return Peer(f"LitServe batch_timeout={timeout_s * 1000:g}ms",
                (sys.executable, "-m", "bench.servers.litserve_server", "{port}", str(timeout_s)), "litserve")


PEERS: dict[str, Peer] = {
    "floor": Peer("HTTP floor (Starlette, no model)", _uvicorn("bench.servers.floor:app"), "starlette"),
    "naive-torch": Peer("naive FastAPI + torch eager fp32", _uvicorn("bench.servers.naive:create_app", "--factory"),
                        "torch", env={"BENCH_BACKEND": "torch"}),
    "naive-ort": Peer("naive FastAPI + ORT (same file)", _uvicorn("bench.servers.naive:create_app", "--factory"),
                      "fastapi", env={"BENCH_BACKEND": "ort"}),
    "stock-100": _bentoml(100),
    "stock-1000": _bentoml(1000),
    "litserve-0": _litserve(0.0),
    "litserve-5ms": _litserve(0.005),
}


def start_peer(peer: Peer, tags: dict[str, str], log_dir: Path, cpus: str | None = None,
               ) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    home = isolated_home(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), log_dir / f"home-{port}")
    env = {**os.environ, **peer.env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
           "HF_HUB_OFFLINE": "1", **{f"BENCH_{f.upper()}_TAG": t for f, t in tags.items()}}
    argv = [a.replace("{port}", str(port)) for a in peer.argv]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    log = (log_dir / f"{peer.name.split()[0].lower()}-{port}.log").open("w")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 240
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{peer.name} exited {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
        with contextlib.suppress(TimeoutError):
            wait_http(url + peer.ready_path, timeout=2)
            return proc, url
    stop_peer(proc)
    raise RuntimeError(f"{peer.name} not ready after 240 s; see {log.name}")


def stop_peer(proc: subprocess.Popen[bytes]) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
