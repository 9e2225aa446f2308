"""The `switchyard` command line against a real two-worker `bentoml serve`: a canary by hand, rollouts
watched to their end, JSON for scripts, and exit codes (0 ok, 1 refused, 2 usage, 3 cannot connect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import AUTH, TOKEN, deploy
from tests.integration.traffic import FAST, NO_ZERO, WITH_ZERO, Traffic
from tests.servers import Served, free_port

pytestmark = pytest.mark.integration
SWITCHYARD = str(Path(sys.executable).parent / "switchyard")  # the installed console script


def run(url: str, *args: str, token: str = TOKEN, timeout: float = 180,
        home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One command, as a script runs it: stdin is not a terminal, the connection comes from the environment."""
    env = {**os.environ, "SWITCHYARD_URL": url, "SWITCHYARD_TOKEN": token,
           "XDG_CONFIG_HOME": str(home or Path("/nonexistent"))}
    env.pop("SWITCHYARD_PROFILE", None)
    return subprocess.run([SWITCHYARD, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


def ok(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, f"rc {out.returncode}\nstdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-2000:]}"
    return json.loads(out.stdout) if out.stdout.lstrip().startswith(("{", "[")) else out.stdout


@pytest.fixture
def digits_back(client: httpx.Client, tags: dict[str, str]) -> Iterator[None]:
    """The MLP alone on digits before and after, whatever the test did (the server is shared)."""
    assert deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="cli test: start").status_code == 200
    yield
    state = client.get("/v1/admin/rollouts/digits", headers=AUTH)
    if state.status_code == 200 and state.json()["status"] in ("running", "paused"):
        client.post("/v1/admin/rollouts/digits/abort", json={"reason": "cli test cleanup"}, headers=AUTH)
    deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="cli test: clean up")


def test_a_canary_by_hand_deploy_promote_roll_back_and_the_audit(server: Served, tags: dict[str, str],
                                                                  digits_back: None) -> None:
    out = ok(run(server.url, "-o", "json", "deploy", "digits", "--stable", tags["mlp"], "--canary", tags["cnn"],
                 "--weight", "10", "--shadow", tags["cnn_int8"], "--shadow-sample", "25", "--reason",
                 "cli: try the cnn", "--yes"))
    assert out["shadow_sample"] == 25 and out["versions"][2] == {"tag": tags["cnn_int8"], "role": "shadow",
                                                                  "weight": 0}
    out["versions"] = out["versions"][:2]
    assert [(v["tag"], v["role"], v["weight"]) for v in out["versions"]] == [(tags["mlp"], "stable", 90),
                                                                               (tags["cnn"], "canary", 10)]
    deployed = out["revision"]
    text = ok(run(server.url, "status"))
    assert "digits" in text and tags["cnn"] in text and "canary" in text
    assert server.grpc is not None and f"gRPC :{server.grpc.rsplit(':', 1)[1]} up" in text
    promoted = ok(run(server.url, "promote", "digits", "--reason", "cli: cnn is better", "--yes", "-o", "json"))
    assert promoted["versions"][0] == {"tag": tags["cnn"], "role": "stable", "weight": 100}
    assert promoted["versions"][1]["role"] == "shadow" and promoted["shadow_sample"] == 25  # shadows stay
    back = ok(run(server.url, "rollback", "digits", "--revision", str(deployed), "--reason", "cli: back to 90/10",
                  "--yes", "-o", "json"))
    assert [v["weight"] for v in back["versions"]] == [90, 10, 0] and back["action"] == "rollback"
    history = ok(run(server.url, "history", "digits", "-o", "json"))
    assert [r["action"] for r in history[:3]] == ["rollback", "promote", "deploy"]
    audit = ok(run(server.url, "audit", "--endpoint", "digits", "--since", "10m", "-o", "json"))
    reasons = [(e["action"], e["reason"]) for e in audit[:3]]
    assert reasons == [("rollback", "cli: back to 90/10"), ("promote", "cli: cnn is better"),
                       ("deploy", "cli: try the cnn")]
    assert all(e["actor"] == "admin" for e in audit[:3])
    table = ok(run(server.url, "audit", "--endpoint", "digits", "--since", "10m"))
    assert "cli: cnn is better" in table and TOKEN not in table


@pytest.mark.parametrize(("canary", "rows", "code", "word"), [
    ("cnn", [WITH_ZERO, NO_ZERO], 0, "promoted"),
    ("faulty", [WITH_ZERO, NO_ZERO], 1, "rolled back"),
])
def test_rollout_watch_exits_0_on_promotion_and_1_on_rollback(server: Served, tags: dict[str, str],
                                                                digits_back: None, canary: str,
                                                                rows: list[list[float]], code: int, word: str) -> None:
    started = ok(run(server.url, "rollout", "start", "digits", tags[canary], "--steps", "20,50,100",
                     "--min-requests", str(FAST["min_requests"]), "--min-seconds", "3",
                     "--interval", str(FAST["interval_s"]), "--latency-ratio", str(FAST["latency_ratio"]),
                     "--reason", f"cli: roll out {canary}", "--yes",
                     "-o", "json"))
    assert started["status"] == "running" and started["percent"] == 20
    with Traffic(server.url, rows):
        watched = run(server.url, "rollout", "watch", "digits", "--every", "0.3", "--timeout", "150")
    assert watched.returncode == code, watched.stdout + watched.stderr
    # (a rollback is told on stderr, a promotion on stdout; the parentheses make the assertion check either)
    assert f"{tags[canary]} {word}" in (watched.stderr if code else watched.stdout), watched.stdout + watched.stderr
    if code == 0:  # a good canary climbs step by step (each step lasts 3 s or more), each change printed once
        steps = [int(line.split()[1]) for line in watched.stdout.splitlines() if line.startswith("running")]
        assert steps[0] == 20 and 50 in steps and steps == sorted(steps)
    status = ok(run(server.url, "rollout", "status", "digits", "-o", "json"))
    assert status["status"] == ("promoted" if code == 0 else "rolled_back")


@pytest.mark.parametrize("args", [
    ["status"], ["endpoints", "list"], ["models", "list"], ["models", "list", "--task", "text-embedding"],
    ["metrics", "digits"], ["history", "digits"], ["audit", "--limit", "5"],
])
def test_every_read_command_prints_json_for_scripts(server: Served, args: list[str]) -> None:
    data = ok(run(server.url, *args, "-o", "json"))
    assert isinstance(data, dict | list) and data
    if args[:2] == ["models", "list"] and len(args) > 2:
        assert {m["task"] for m in data} == {"text-embedding"}


def test_rollout_status_pause_resume_and_abort_in_json(server: Served, tags: dict[str, str],
                                                       digits_back: None) -> None:
    ok(run(server.url, "rollout", "start", "digits", tags["cnn"], "--min-seconds", "600", "--reason", "cli: slow",
           "--yes"))
    assert ok(run(server.url, "rollout", "pause", "digits", "--reason", "cli: wait", "--yes", "-o", "json"))["status"] \
        == "paused"
    assert ok(run(server.url, "rollout", "resume", "digits", "--reason", "cli: go", "--yes", "-o", "json"))["status"] \
        == "running"
    assert ok(run(server.url, "rollout", "abort", "digits", "--reason", "cli: stop", "--yes", "-o", "json"))["status"] \
        == "aborted"
    out = run(server.url, "rollout", "watch", "digits")  # an aborted rollout is over: exit 1 at once
    assert out.returncode == 1 and "aborted" in out.stderr


def test_endpoints_create_and_delete(server: Served, tags: dict[str, str]) -> None:
    created = ok(run(server.url, "endpoints", "create", "cli-digits", "--task", "image-classification", "--model",
                     tags["mlp"], "--reason", "cli: a second door", "--yes", "-o", "json"))
    assert created["route"] == "/v1/cli-digits/predict" and created["source"] == "api"
    assert "cli-digits" in ok(run(server.url, "endpoints", "list"))
    gone = ok(run(server.url, "endpoints", "delete", "cli-digits", "--reason", "cli: done", "--yes", "-o", "json"))
    assert gone["deleted"] is True


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["deploy", "digits", "--stable", "no-such-model:1", "--reason", "r", "--yes"], 1,
     "Refused (422): versions[0].tag"),
    (["endpoints", "create", "Bad_Name", "--task", "tensor", "--reason", "r", "--yes"], 1, "name:"),
    (["rollback", "digits", "--revision", "0", "--reason", "r", "--yes"], 1, "revision: Input should be greater"),
    (["deploy", "digits", "--stable", "x", "--weight", "120", "--reason", "r", "--yes"], 2, "--weight"),
    (["status", "--no-such-flag"], 2, "No such option"),
    (["deploy", "digits", "--stable", "x", "--reason", "r"], 2, "pass --yes"),
])
def test_exit_codes_for_refused_changes_and_usage_errors(server: Served, args: list[str], code: int,
                                                         needle: str) -> None:
    out = run(server.url, *args)
    assert out.returncode == code and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()[-1]) < 300  # one line, in words
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_wrong_token_is_refused_and_never_printed(server: Served) -> None:
    out = run(server.url, "promote", "digits", "--reason", "r", "--yes", token="wrong-secret-123")
    assert out.returncode == 1 and "--token or SWITCHYARD_TOKEN" in out.stderr
    assert "wrong-secret-123" not in out.stdout + out.stderr


def test_a_server_that_is_down_exits_3() -> None:
    out = run(f"http://127.0.0.1:{free_port()}", "status", token="s3cret-token")
    assert out.returncode == 3 and "Cannot reach the service" in out.stderr and "s3cret-token" not in out.stderr


def test_a_named_profile(server: Served, tmp_path: Path) -> None:
    config = tmp_path / "switchyard" / "config.toml"
    config.parent.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    config.write_text(f'[profiles.test]\nurl = "{server.url}"\ntoken_file = "{tmp_path / "token"}"\n')
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    for name in ("SWITCHYARD_URL", "SWITCHYARD_TOKEN", "SWITCHYARD_PROFILE"):
        env.pop(name, None)
    out = subprocess.run([SWITCHYARD, "--profile", "test", "-o", "json", "endpoints", "list"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0 and {e["name"] for e in json.loads(out.stdout)} >= {"digits", "minilm"}
    out = subprocess.run([SWITCHYARD, "--profile", "prod", "status"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 2 and "no profile 'prod'" in out.stderr and "profiles: test" in out.stderr


def test_models_import_and_verify_run_the_build_pipeline(server: Served, tags: dict[str, str]) -> None:
    out = run(server.url, "models", "import", "--help")
    assert out.returncode == 0 and "--torch" in out.stdout and "--validation" in out.stdout
    assert ok(run(server.url, "models", "verify", tags["mlp"]))
    assert run(server.url, "models", "verify", "no-such-model:1").returncode != 0
