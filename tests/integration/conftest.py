"""A real `bentoml serve` on 127.0.0.1 over a store of real, registered versions."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.families import get_builder
from models.optimize import optimize
from models.registry import register
from models.settings import BuildSettings
from models.validate import validate
from models.workdir import ModelDir
from tests.conftest import ROOT
from tests.faulty import register_biased, register_faulty
from tests.servers import Postgres, Served, free_port, serve_env

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# People with their own tokens and roles (SWITCHYARD_ADMIN_TOKENS) on the single-worker server.
PEOPLE = {"vic": ("vic-token-0123456789", "viewer"), "olga": ("olga-token-012345678", "operator"),
          "ada": ("ada-token-0123456789", "admin")}


# Servers that outlive one test (session or module fixtures): each test leaves their deployments as it found them.
SHARED_SERVERS = ("server", "single_worker", "secured", "watched", "hostile", "logged", "fuzzed", "capped", "traced",
                  "gen_server", "many")


def _latest_revision(served: Served, endpoint: str) -> int | None:
    """The control plane's newest revision of `endpoint` (None without a control plane)."""
    r = httpx.get(f"{served.url}/v1/admin/deployments/{endpoint}", headers=AUTH, timeout=60)
    return max((rev["revision"] for rev in r.json()["revisions"]), default=0) if r.status_code == 200 else None


def _deployments(served: Served, settle_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Every endpoint's split, read once the worker that answers serves the control plane's newest revision of
    each. A worker applies another's change within a poll: a split read before that (an endpoint created a
    moment ago still without versions, say) is not the one the test found, and no PUT can put it back."""
    deadline = time.monotonic() + settle_s
    while True:
        r = httpx.get(f"{served.url}/v1/admin/deployments", headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        now = r.json()
        latest = {name: _latest_revision(served, name) or 0 for name, e in now.items() if not e["load_error"]}
        behind = {name: (now[name]["revision"], rev) for name, rev in latest.items() if now[name]["revision"] < rev}
        if not behind:
            break
        assert time.monotonic() < deadline, f"a worker still serves older revisions after {settle_s} s " \
                                            f"(endpoint: (served, newest)): {behind}"
        time.sleep(0.1)
    return {name: {"versions": [{k: v[k] for k in ("tag", "role", "weight")} for v in e["versions"]],
                   "sticky": e["sticky"], "shadow_sample": e["shadow_sample"]} for name, e in now.items()}


@pytest.fixture(autouse=True)
def shared_servers_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Puts back every deployment a test changed on a shared server (and stops a rollout it left running),
    even when the test failed half-way: the suite runs in a random order, so no test may inherit another's
    split. Shared fixtures are set up before this one (pytest sets up wider scopes first), so asking for
    them here starts nothing early."""
    servers = []
    for name in SHARED_SERVERS:
        if name in request.fixturenames:
            value = request.getfixturevalue(name)
            servers += [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, Served)]
    before = [(served, _deployments(served)) for served in servers]
    yield
    for served, was in before:
        now = _deployments(served)
        for endpoint, spec in was.items():
            if now.get(endpoint, spec) == spec:
                continue
            httpx.post(f"{served.url}/v1/admin/rollouts/{endpoint}/abort", json={"reason": "test teardown"},
                       headers=AUTH, timeout=60)  # 409 when none is running
            r = httpx.put(f"{served.url}/v1/admin/deployments/{endpoint}", json={**spec, "reason": "test teardown"},
                          headers=AUTH, timeout=60)
            assert r.status_code == 200, f"could not put {endpoint} back as the test found it: {r.text}"


def _build(root: Path, key: str, variant: str) -> str:
    builder = get_builder(key, BuildSettings(work_dir=root, threads=2))
    md = ModelDir(root, key)
    if not (md.variant_dir(variant) / "model.onnx").is_file():
        optimize(builder, md, variant)
    validate(builder, md, variant, max_drop=1.0)
    return register(builder, md, variant)


@pytest.fixture(scope="session")
def tags(digits_root: Path, minilm_root: Path) -> dict[str, str]:
    """Versions registered in this session's store (BENTOML_HOME from pytest_configure)."""
    return {
        "mlp": _build(digits_root, "digits-mlp", "fp32"),
        "cnn": _build(digits_root, "digits-cnn", "fp32"),
        "cnn_int8": _build(digits_root, "digits-cnn", "int8-static"),
        "faulty": register_faulty(digits_root / "digits-mlp" / "export" / "model.onnx"),
        "biased": register_biased(digits_root / "digits-mlp" / "export" / "model.onnx"),
        "minilm": _build(minilm_root, "minilm", "int8-static"),
    }


def import_lm(hf: Path, name: str, validation: Path, *variants: str) -> list[str]:
    """`python -m models import --task text-generation` into the session's store; the registered tags."""
    args = [sys.executable, "-m", "models", "import", "--name", name, "--task", "text-generation", "--hf", str(hf),
            "--validation", str(validation), "--min-token-agreement", "0.5", "--max-perplexity-ratio", "1.2"]
    for v in variants:
        args += ["--variant", v]
    proc = subprocess.run(args, cwd=ROOT, env={**os.environ, "SWITCHYARD_THREADS": "2"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in proc.stdout.split() if line.startswith(f"{name}-")]


@pytest.fixture(scope="session")
def lm_tags(tiny_lms: dict[str, Path], tiny_lm_text: Path) -> dict[str, str]:
    """The tiny GPT-2 imported in three variants, and the garbage model (the bad canary), once a session."""
    fp32, int8, int4 = import_lm(tiny_lms["gpt2"], "tiny-gpt2", tiny_lm_text, "fp32", "int8-dynamic", "int4")
    (garbage,) = import_lm(tiny_lms["garbage"], "tiny-garbage", tiny_lm_text, "fp32")
    return {"fp32": fp32, "int8": int8, "int4": int4, "garbage": garbage}


@contextlib.contextmanager
def console_on_loopback() -> Iterator[None]:
    """AppTest runs a console page as `make serve` starts it: listening on 127.0.0.1, where the console's own
    SWITCHYARD_ADMIN_TOKEN signs its one user in (beyond loopback it signs nobody in)."""
    from streamlit import config

    previous = config.get_option("server.address")
    config.set_option("server.address", "127.0.0.1")
    try:
        yield
    finally:
        config.set_option("server.address", previous)


def serve_with(tags: dict[str, str], state: Path, workers: int, bentoml_options: str = "",
               share_workers: bool = False, **settings: str) -> Iterator[Served]:
    """A server on the session's versions; `settings` are more SWITCHYARD_* values, by lower-case name, and
    `bentoml_options` more BENTOML_CONFIG_OPTIONS. `share_workers`: SWITCHYARD_WORKERS says how many there
    are, so that threads and rates are split between them (as README tells a deployment to)."""
    if share_workers:
        settings["workers"] = str(workers)
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN,
                    default_models=json.dumps({"digits": tags["mlp"], "minilm": tags["minilm"]}), **settings)
    env["BENTOML_CONFIG_OPTIONS"] = f"services.switchyard.workers={workers} {bentoml_options}".strip()
    served = Served(env, log_dir=state)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


@pytest.fixture(scope="session")
def server(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two workers, so control-plane changes must reach a worker that did not make them; gRPC on."""
    yield from serve_with(tags, tmp_path_factory.mktemp("state"), workers=2, grpc_port=str(free_port()))


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A PostgreSQL server of the module's own: its tests may stop it."""
    server = Postgres()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def single_worker(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One worker, the default: Gradio keeps its sessions in one process."""
    people = {name: {"token": tok, "role": role} for name, (tok, role) in PEOPLE.items()}
    yield from serve_with(tags, tmp_path_factory.mktemp("state-1w"), workers=1, admin_tokens=json.dumps(people))


@pytest.fixture
def client(server: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def deploy(client: httpx.Client, endpoint: str, versions: list[tuple[str, str, int]], sticky: bool = False,
           reason: str = "test") -> httpx.Response:
    body = {"versions": [{"tag": t, "role": r, "weight": w} for t, r, w in versions], "sticky": sticky,
            "reason": reason}
    return client.put(f"/v1/admin/deployments/{endpoint}", json=body, headers=AUTH)


def start_replica(tags: dict[str, str], db_url: str, root: Path, name: str, workers: int,
                  **settings: str) -> Served:
    """One `bentoml serve` replica on a shared PostgreSQL control plane, with state of its own under root/name."""
    state = root / name
    state.mkdir(exist_ok=True)
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN, db_url=db_url,
                    default_models=json.dumps({"digits": tags["mlp"], "minilm": tags["minilm"]}), **settings)
    env["BENTOML_CONFIG_OPTIONS"] = f"services.switchyard.workers={workers}"
    served = Served(env, log_dir=state)
    served.wait_ready()
    return served
