"""Real servers for tests: Debian's PostgreSQL and `bentoml serve`, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bentos.api.worker import KEEP_ALIVE_S

ROOT = Path(__file__).resolve().parent.parent


_RESERVED: list[Any] = []  # lock files held open for this process's life


def free_port() -> int:
    """A port no one else will take while this test process lives. Asking the kernel for port 0 and closing
    it races: another process may bind it, or the kernel may hand it to a client socket, before the server
    does. So ports come from below the kernel's ephemeral range (never handed out implicitly), and each is
    claimed with a lock file that every test process on the machine (pytest, a parallel benchmark's
    servers) respects."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    locks = Path(tempfile.gettempdir()) / "switchyard-test-ports"
    locks.mkdir(exist_ok=True)
    candidates = list(range(max(1024, low - 12_000), low))
    random.SystemRandom().shuffle(candidates)  # the suite reseeds `random` per test
    for port in candidates:
        lock = open(locks / str(port), "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:  # and nothing outside the tests holds it
                s.bind(("127.0.0.1", port))
        except OSError:
            lock.close()
            continue
        _RESERVED.append(lock)
        return port
    raise RuntimeError(f"no free port below {low}")


class Postgres:
    """A throwaway cluster: initdb in a temp dir, started and stopped with pg_ctl."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise FileNotFoundError("PostgreSQL server binaries not found (Debian package 'postgresql')")
        self.bindir = Path(bins[-1]).parent
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="switchyard-pg-"))
        self.log = self.datadir.parent / f"{self.datadir.name}.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:  # initdb refuses to run as root
            shutil.chown(self.datadir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", "switchyard", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://switchyard@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        if self._as_root and not self.log.exists():
            self.log.touch()
            shutil.chown(self.log, "postgres", "postgres")
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-w", "-o",
                  f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.log.unlink(missing_ok=True)


def wrk_until(url: str, bodies: list[str], connections: int, at_least: int, pid: int,
              deadline_s: float = 180.0, round_s: float = 5.0) -> tuple[int, int, int]:
    """wrk in rounds until `at_least` requests were answered: a test that needs that much traffic gets it on a
    slow or loaded machine too (speed is bench/'s claim). Returns requests, non-2xx answers, socket errors."""
    from bench.harness import wrk

    requests = non2xx = socket_errors = 0
    end = time.monotonic() + deadline_s
    while requests < at_least:
        assert time.monotonic() < end, f"only {requests} of {at_least} requests answered in {deadline_s:g} s"
        load = wrk(url, bodies, connections=connections, seconds=round_s, pid=pid, rows_per_request=1)
        requests, non2xx, socket_errors = (requests + load.requests, non2xx + load.non2xx,
                                           socket_errors + load.socket_errors)
    return requests, non2xx, socket_errors


def worker_of(client: httpx.Client) -> str:
    """The worker behind this client's connection: a connection stays with the worker that accepted it."""
    return str(client.get("/v1/health").json()["worker"])


def every_worker(url: str, ok: Callable[[httpx.Client], bool], workers: int, timeout_s: float = 10.0) -> float:
    """Seconds until each of `workers` workers has answered `ok` on a connection of its own (fresh
    connections until every worker was reached); fails naming how many did within `timeout_s`."""
    start, done, seen = time.monotonic(), set(), set()
    while time.monotonic() - start < timeout_s:
        with httpx.Client(base_url=url, timeout=30) as c:
            worker = worker_of(c)
            seen.add(worker)
            if worker not in done and ok(c):
                done.add(worker)
        if len(done) == workers:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{len(done)} of {workers} workers answered as expected within {timeout_s:g} s; "
                         f"workers reached: {sorted(seen)}")


def per_worker(url: str, call: Callable[[httpx.Client], Any], workers: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """`call` once on each of `workers` workers (fresh connections until every one was reached)."""
    out: dict[str, Any] = {}

    def once(c: httpx.Client) -> bool:
        out[worker_of(c)] = call(c)
        return True

    every_worker(url, once, workers, timeout_s)
    return out


class Served:
    """`bentoml serve` as a subprocess on 127.0.0.1, in its own process group."""

    def __init__(self, env: dict[str, str], target: str = "service:Switchyard", cwd: Path = ROOT,
                 port: int | None = None, log_dir: Path | None = None, cpu_list: str | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        grpc_port = env.get("SWITCHYARD_GRPC_PORT", "false")
        self.grpc = f"127.0.0.1:{grpc_port}" if grpc_port.isdigit() else None  # host:port, when gRPC is on
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"bentoml-serve-{self.port}.log"
        cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port),
               "--timeout-keep-alive", str(KEEP_ALIVE_S)]
        if cpu_list:  # benchmarks pin the server away from the load generator
            cmd = ["taskset", "-c", cpu_list, *cmd]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM stops the workers through BentoML; SIGKILL must reach them itself, because
        each worker runs in a session of its own and would keep serving the port as an orphan."""
        import psutil

        workers = psutil.Process(self.proc.pid).children(recursive=True) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.send_signal(signal.SIGKILL if sig == signal.SIGKILL else signal.SIGTERM)
        _, alive = psutil.wait_procs(workers, timeout=30)
        for worker in alive:  # still in a graceful shutdown (a client kept a stream open): not our problem to wait
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        psutil.wait_procs(alive, timeout=10)
        self._log.close()


def isolated_home(shared: Path, where: Path) -> Path:
    """A BENTOML_HOME of its own that shares the model and bento stores.

    Every `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts, so two
    servers on one home would wipe each other's metrics.
    """
    home = where / "bentoml-home"
    home.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        link = home / store
        if not link.exists():
            link.symlink_to(shared.resolve() / store, target_is_directory=True)
    return home


SIGNING_KEY_FILE = "SWITCHYARD_SIGNING_KEY_FILE"  # the session's key (tests/conftest.py) reaches every server


def serve_env(bentoml_home: Path, state_dir: Path, **settings: str) -> dict[str, str]:
    """A server's environment; gRPC is off unless `grpc_port` is given (every worker of every server would
    otherwise share the default port 3001, through SO_REUSEPORT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_") or k == SIGNING_KEY_FILE}
    env.update(BENTOML_HOME=str(isolated_home(bentoml_home, state_dir)), BENTOML_DO_NOT_TRACK="True",
               HF_HUB_OFFLINE="1", SWITCHYARD_STATE_DIR=str(state_dir), PYTHONUNBUFFERED="1",
               SWITCHYARD_GRPC_PORT="false")
    env.update({f"SWITCHYARD_{k.upper()}": v for k, v in settings.items()})
    return env


class Prometheus:
    """Debian's prometheus on 127.0.0.1, scraping `targets` every second with deploy/'s rules."""

    def __init__(self, targets: list[str], workdir: Path, rule_files: list[Path]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus not found (Debian package 'prometheus')")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{', '.join(str(p) for p in rule_files)}]\n"
            "scrape_configs:\n"
            f"  - job_name: switchyard\n    static_configs: [{{targets: [{', '.join(targets)}]}}]\n")
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready:\n{self.log_path.read_text()[-3000:]}")

    def query(self, promql: str) -> list[dict[str, object]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10).json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
