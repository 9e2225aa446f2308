"""The command line as an operator sees it: a real terminal (tmux) running `switchyard status` and
`switchyard rollout watch`; the panes are kept in the run's artifacts directory for the closing note."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import artifacts_dir
from tests.integration.conftest import AUTH, TOKEN, deploy
from tests.integration.test_cli import SWITCHYARD
from tests.integration.traffic import FAST, NO_ZERO, WITH_ZERO, Traffic
from tests.servers import Served

pytestmark = pytest.mark.integration
ARTIFACTS = artifacts_dir("cli")


class Tmux:
    """A tmux server of our own (its own socket), one 150x45 window, with the service in its environment."""

    def __init__(self, url: str) -> None:
        if shutil.which("tmux") is None:
            raise FileNotFoundError("tmux not found (Debian package 'tmux')")
        self.socket = f"switchyard-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "cli", "-x", "150", "-y", "45", "-e", f"SWITCHYARD_URL={url}",
                   "-e", f"SWITCHYARD_TOKEN={TOKEN}", "-e", "XDG_CONFIG_HOME=/nonexistent", "bash", "--norc")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=30).stdout

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "cli", line, "Enter")

    def pane(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "cli")

    def wait_for(self, needle: str, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if needle in (text := self.pane()):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} never showed in the pane:\n{self.pane()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(server: Served) -> Iterator[Tmux]:
    term = Tmux(server.url)
    yield term
    term.close()


def keep(name: str, text: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_text(text.rstrip() + "\n")


def test_status_and_a_live_rollout_watch_in_a_terminal(tmux: Tmux, server: Served, client: httpx.Client,
                                                       tags: dict[str, str]) -> None:
    assert deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="terminal test").status_code == 200
    tmux.type(f"{SWITCHYARD} status")
    pane = tmux.wait_for("minilm")
    keep("status.txt", pane)
    header = next(line for line in pane.splitlines() if line.startswith("endpoint"))
    assert header.split() == ["endpoint", "version", "role", "weight", "loaded", "MiB", "req/s", "p95", "ms",
                              "errors", "rollout"]
    assert tags["mlp"] in pane and "ready" in pane and "digits (always)" in pane
    loaded = re.search(r"models: (\d+) loaded", pane)  # other tests may have added endpoints to this server
    assert loaded is not None and int(loaded[1]) >= 2, pane

    policy = {"steps": [20, 50, 100], **FAST, "min_seconds": 4}
    r = client.post("/v1/admin/rollouts/digits", json={"tag": tags["cnn"], "policy": policy, "reason": "terminal"},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    try:
        with Traffic(server.url, [WITH_ZERO, NO_ZERO]):
            tmux.type(f"clear; {SWITCHYARD} rollout watch digits --every 0.5; echo watch-exit=$?")
            live = tmux.wait_for("/ 60")  # the live view: progress toward the step's minimum requests
            keep("rollout-watch-live.txt", live)
            end = tmux.wait_for("watch-exit=", timeout=150)
        keep("rollout-watch-end.txt", end)
    finally:
        client.post("/v1/admin/rollouts/digits/abort", json={"reason": "terminal test cleanup"}, headers=AUTH)
        deploy(client, "digits", [(tags["mlp"], "stable", 100)], reason="terminal test: clean up")
    assert "running" in live and "requests" in live and "seconds" in live and "━" in live  # the progress bars
    assert "errors" in live and "latency" in live  # the latest evidence, check by check
    assert "watch-exit=0" in end and "promoted" in end
