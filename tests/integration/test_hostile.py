"""A hostile caller against a real `bentoml serve`: bodies that never end or never arrive, images that cost
more to decode than they weigh, texts over their limit on the other protocol, random paths, a web page
driving the console, secrets that are empty. Each is refused with a 4xx that names the limit, the server
stays up, and nothing of it counts against a model.

Raw sockets where an HTTP client would not misbehave enough (chunked bodies past the limit, stalled bodies).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.integration.conftest import AUTH, TOKEN, deploy, serve_with
from tests.servers import Served, serve_env

pytestmark = pytest.mark.integration
ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34
BODY_TIMEOUT_S = 5.0  # long enough that 20 ordinary requests fit before it on a loaded machine


@pytest.fixture(scope="module")
def hostile(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One worker, keys required, the playground on, a short body deadline."""
    yield from serve_with(tags, tmp_path_factory.mktemp("state-hostile"), 1, require_api_key="true",
                          body_timeout_s=str(BODY_TIMEOUT_S))


@pytest.fixture(scope="module")
def key(hostile: Served) -> str:
    r = httpx.post(f"{hostile.url}/v1/admin/keys", json={"name": "probe", "rate": 10_000, "burst": 10_000,
                                                          "scopes": ["pin"], "reason": "hostile tests"},
                   headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["secret"])


def png(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def worker_rss_mb(served: Served) -> float:
    procs = psutil.Process(served.proc.pid).children(recursive=True)
    return max(p.memory_info().rss for p in procs) / 2**20


def raw(served: Served, head: str, chunks: Iterator[bytes], wait_s: float = 30) -> tuple[int, int]:
    """Send a request head, then body chunks until the server answers or closes; (status, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", served.port), timeout=wait_s) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        reply = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                reply += sock.recv(65536)
            if reply:
                break
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(wait_s)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n" not in reply:
                more = sock.recv(65536)
                if not more:
                    break
                reply += more
    return int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/1.1") else 0, sent


def chunked(total: int, first: bytes = b"", piece: bytes = b"x" * 65536) -> Iterator[bytes]:
    if first:
        yield f"{len(first):x}\r\n".encode() + first + b"\r\n"
    for _ in range(total // len(piece)):
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


# A well-formed start: a multipart file part, then its data without end.
MULTIPART_START = (b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                   b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("path, content_type", [
    ("/v1/digits/predict", "multipart/form-data; boundary=b0undary"),
    ("/v1/digits/predict", "application/json"),
    ("/v2/models/digits/infer", "application/octet-stream"),
])
def test_a_chunked_body_past_the_limit_is_413_and_costs_no_memory(hostile: Served, key: str, path: str,
                                                                  content_type: str) -> None:
    """A 20 MB body with no Content-Length under a 1 MB limit was read whole into memory; now the worker stops
    at the first byte past the limit."""
    before = worker_rss_mb(hostile)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    first = MULTIPART_START if content_type.startswith("multipart/") else b""
    status, sent = raw(hostile, head, chunked(20 * 2**20, first))
    assert status == 413 and sent < 8 * 2**20, (status, sent)
    assert worker_rss_mb(hostile) - before < 15
    r = httpx.post(f"{hostile.url}/v1/digits/predict", json={"inputs": [ROW]}, headers={"X-API-Key": key},
                   timeout=30)
    assert r.status_code == 200, r.text


def test_stalled_bodies_get_408_and_hold_nothing_while_others_are_served(hostile: Served, key: str) -> None:
    stalled = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", hostile.port), timeout=30)
        sock.sendall(f"POST /v1/digits/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [".encode())
        stalled.append(sock)
    try:
        with httpx.Client(base_url=hostile.url, timeout=30, headers={"X-API-Key": key}) as c:
            for _ in range(20):  # beside them, ordinary requests are answered at once
                assert c.post("/v1/digits/predict", json={"inputs": [ROW]}).status_code == 200
        # ...while every stalled one is still held: none has had its 408 yet (no clock: the order is the claim)
        readable, _, _ = select.select(stalled, [], [], 0)
        assert not readable, f"{len(readable)} stalled connections were answered before the 20 ordinary requests"
        statuses = []
        for sock in stalled:
            sock.settimeout(BODY_TIMEOUT_S + 20)
            reply = b""
            while more := sock.recv(4096):  # the server closes the connection after the 408
                reply += more
            statuses.append(int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/1.1") else 0)
            assert b"limits.body_timeout_s" in reply, reply[:400]
        assert statuses.count(408) == len(stalled), sorted(set(statuses))
    finally:
        for sock in stalled:
            sock.close()
    assert httpx.get(f"{hostile.url}/v1/health", timeout=10).status_code == 200


def test_an_image_bigger_than_it_weighs_is_refused_from_its_header(hostile: Served, key: str) -> None:
    """A flat 4000x4000 PNG (tens of KB) took 1.7 s and came back 500; now 422 before any decoding.

    "Before decoding" is shown without a clock: the PNG cut where its pixel data begins (signature, IHDR and
    the first IDAT's length and type) gets the same answer, which a server that decoded could not give."""
    flat = png(np.full((4000, 4000), 255, np.uint8))
    assert len(flat) < 200_000
    for name, body in (("flat.png", flat), ("header-only.png", flat[:flat.find(b"IDAT") + 4])):
        r = httpx.post(f"{hostile.url}/v1/digits/predict", files={"image": (name, body, "image/png")},
                       headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 422 and "4000x4000" in r.text and "limits.max_image_pixels" in r.text, r.text


def test_blank_digits_are_422_and_never_count_against_a_canary(hostile: Served, key: str,
                                                               tags: dict[str, str]) -> None:
    """Five blank digits pinned to a canary once opened its breaker: with sticky routing, a caller could have
    forced a rollback."""
    with httpx.Client(base_url=hostile.url, timeout=30) as c:
        assert deploy(c, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)]).status_code == 200
        blank = png(np.full((8, 8), 255, np.uint8))
        pinned = {"X-API-Key": key, "X-Model-Version": tags["cnn"]}
        for _ in range(5):
            r = c.post("/v1/digits/predict", files={"image": ("blank.png", blank, "image/png")}, headers=pinned)
            assert r.status_code == 422 and "empty" in r.text, r.text
            r = c.post("/v1/digits/predict", json={"images": [base64.b64encode(blank).decode()]}, headers=pinned)
            assert r.status_code == 422 and "empty" in r.text, r.text
        health = c.get("/v1/health").json()["endpoints"]["digits"]
        canary = next(v for v in health["versions"] if v["tag"] == tags["cnn"])
        assert canary["circuit"] == "closed"
        metrics = c.get("/metrics").text
        invalid = [line for line in metrics.splitlines() if line.startswith("switchyard_requests_total")
                   and 'outcome="invalid"' in line and tags["cnn"] in line]
        assert invalid and float(invalid[0].rsplit(" ", 1)[1]) >= 5, invalid
        errors = [line for line in metrics.splitlines() if line.startswith("switchyard_requests_total")
                  and 'outcome="error"' in line and tags["cnn"] in line]
        assert not errors, errors
        assert deploy(c, "digits", [(tags["mlp"], "stable", 100)]).status_code == 200


def test_oip_texts_have_the_same_per_text_limit_as_v1(hostile: Served, key: str) -> None:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * 2001]}]}
    r = httpx.post(f"{hostile.url}/v2/models/minilm/infer", json=body, headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 400 and "limits.max_chars" in r.text, r.text
    r = httpx.post(f"{hostile.url}/v1/minilm/embed", json={"texts": ["x" * 2001]}, headers={"X-API-Key": key},
                   timeout=30)
    assert r.status_code == 422, r.text


def test_random_paths_do_not_grow_metrics(hostile: Served) -> None:
    """BentoML labels its HTTP metrics with the raw path: 1,500 random paths once took /metrics from 43 lines
    to about 30,000."""
    def lines() -> int:
        return len(httpx.get(f"{hostile.url}/metrics", timeout=30).text.splitlines())

    before = lines()
    with httpx.Client(base_url=hostile.url, timeout=30) as c:
        for i in range(2000):
            assert c.get(f"/{uuid.uuid4().hex}/{i}").status_code == 404
    assert lines() - before < 20


def test_the_playground_asks_for_a_key_when_keys_are_required(hostile: Served, key: str) -> None:
    from gradio_client import Client

    gradio = Client(f"{hostile.url}/playground/", verbose=False)
    body = json.dumps({"inputs": [ROW]})
    with pytest.raises(Exception, match="API key is required"):
        gradio.predict("digits", body, "routed", "", None, api_name="/ask")
    answer = gradio.predict("digits", body, "routed", "", None, key, api_name="/ask")
    assert answer["model_version"] and answer["results"][0]["label"] in range(10)


def test_an_empty_admin_token_stops_the_service_naming_the_variable(tags: dict[str, str], tmp_path: Path) -> None:
    env = serve_env(Path(__import__("os").environ["BENTOML_HOME"]), tmp_path, admin_token="")
    served = Served(env, log_dir=tmp_path)
    try:
        end = time.monotonic() + 60
        while "SWITCHYARD_ADMIN_TOKEN must be at least 16" not in served.log_text() and time.monotonic() < end:
            time.sleep(0.5)
        assert "SWITCHYARD_ADMIN_TOKEN must be at least 16" in served.log_text(), served.log_text()[-3000:]
        with pytest.raises(httpx.HTTPError):  # it never serves
            httpx.get(f"{served.url}/readyz", timeout=2).raise_for_status()
    finally:
        served.kill()


def websocket_status(port: int, host: str) -> int:
    """The status of a WebSocket handshake to the console's stream with this Host header."""
    key = base64.b64encode(b"0123456789abcdef").decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Origin: http://{host}\r\n\r\n").encode())
        reply = sock.recv(4096)
    return int(reply.split(b" ")[1])


def test_a_web_page_cannot_reach_the_console_by_another_host_name(hostile: Served) -> None:
    """DNS rebinding: a page on evil.example, its name pointed at 127.0.0.1, must not get the console's stream
    (a console started with the admin token signs its loopback user in)."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.servers import free_port

    port = free_port()
    env = {**__import__("os").environ, "SWITCHYARD_SERVICE_URL": hostile.url, "SWITCHYARD_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "admin" / "app.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        assert websocket_status(port, f"127.0.0.1:{port}") == 101
        assert websocket_status(port, f"localhost:{port}") == 101
        assert websocket_status(port, f"evil.example:{port}") != 101
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_console_reachable_from_elsewhere_signs_no_visitor_in(hostile: Served,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    monkeypatch.setenv("SWITCHYARD_SERVICE_URL", hostile.url)
    monkeypatch.setenv("SWITCHYARD_ADMIN_TOKEN", TOKEN)
    previous = config.get_option("server.address")
    try:
        for address, signed_in in (("0.0.0.0", False), ("127.0.0.1", True)):
            config.set_option("server.address", address)
            at = AppTest.from_file(str(ROOT / "admin" / "app.py"), default_timeout=60)
            at.run()
            assert not at.exception, at.exception
            shown: Any = [t.value for t in at.title]
            assert ("Sign in to Switchyard" in shown) is not signed_in, (address, shown)
    finally:
        config.set_option("server.address", previous)


def test_a_person_in_the_playground_is_asked_for_a_key_and_answered_with_one(hostile: Served, key: str) -> None:
    """In a real browser: keys required, the digits tab shows an API key field; Run without one says a key is
    needed, with one it answers."""
    from playwright.sync_api import sync_playwright

    from tests.conftest import artifacts_dir
    from tests.integration.test_playground import CHROMIUM_FLAGS, open_tab

    artifacts = artifacts_dir()
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"{hostile.url}/playground/", wait_until="networkidle", timeout=60_000)
        open_tab(page, "digits")
        field = page.get_by_label("API key").locator("visible=true").first  # the digits tab's, not a hidden tab's
        field.wait_for(timeout=30_000)
        page.locator("#run-digits").click()
        page.get_by_text("an API key is required").first.wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "playground-key-required.png"), full_page=True)
        field.fill(key)
        page.locator("#run-digits").click()
        answer = page.locator("#answer-digits")
        answer.get_by_text("Answered by").wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts / "playground-key-given.png"), full_page=True)
        text = answer.inner_text()
        browser.close()
    assert "Answered by" in text and "digits-mlp" in text
