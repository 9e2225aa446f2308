"""The Gradio playground on the served stack: gradio_client, and a real Chromium page."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from models.families.digits import splits
from tests.conftest import ROOT, artifacts_dir
from tests.integration.conftest import AUTH, deploy
from tests.servers import Served

pytestmark = pytest.mark.integration
ARTIFACTS = artifacts_dir()
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def open_tab(page: Any, name: str) -> None:
    """Click the playground's tab for endpoint `name`. Gradio moves the tabs that do not fit into an overflow
    menu (other tests add endpoints, so which ones do depends on the order they ran in): open it when the tab
    is not in view, and pick the endpoint there."""
    page.get_by_role("tab").first.wait_for(timeout=30_000)  # the tab bar is drawn
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator(".overflow-menu button").first.click()
    page.locator(".overflow-dropdown").get_by_text(name, exact=True).click()


def chat(page: Any, url: str, endpoint: str, message: str) -> Any:
    """In the playground at `url`: `message` sent on `endpoint`'s chat tab; its answer panel once answered."""
    page.goto(f"{url}/playground/", wait_until="networkidle", timeout=60_000)
    open_tab(page, endpoint)
    page.locator(f"#message-{endpoint} textarea").fill(message)
    page.locator(f"#send-{endpoint}").click()
    answer = page.locator(f"#answer-{endpoint}")
    answer.get_by_text("Answered by").wait_for(timeout=30_000)
    return answer


@pytest.fixture
def server(single_worker: Served) -> Served:
    return single_worker


@pytest.fixture(scope="module")
def gradio(single_worker: Served, tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    with httpx.Client(base_url=single_worker.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)])
    return Client(f"{single_worker.url}/playground/", verbose=False,
                  download_files=str(tmp_path_factory.mktemp("gradio-downloads")))


X_TEST, Y_TEST = splits()["test"]


def digit(gradio: Any, i: int, mode: str = "routed", pinned: str | None = None, key: str = "") -> dict[str, Any]:
    body = json.dumps({"inputs": [X_TEST[i].tolist()]})
    answer = gradio.predict("digits", body, mode, key, pinned, api_name="/ask")
    return {**answer, "label": answer["results"][0]["label"], "true_label": int(Y_TEST[i])}


def test_playground_answers_200(server: Served) -> None:
    r = httpx.get(f"{server.url}/playground/", timeout=30, follow_redirects=True)
    assert r.status_code == 200 and "gradio" in r.text.lower()


def test_known_digits_are_classified_and_the_version_is_named(gradio: Any, tags: dict[str, str]) -> None:
    answers = [digit(gradio, i) for i in range(10)]
    correct = sum(a["label"] == a["true_label"] for a in answers)
    assert correct >= 9, answers
    assert all(a["model_version"] == tags["mlp"] and a["route"] == "stable" for a in answers)


def test_pinned_mode_reaches_live_and_stored_versions(gradio: Any, tags: dict[str, str]) -> None:
    for tag in (tags["mlp"], tags["cnn_int8"]):  # cnn_int8 is not live: loaded as a pin-only preview
        answer = digit(gradio, 0, mode="pinned", pinned=tag)
        assert answer["model_version"] == tag and answer["route"] == "pinned"


def test_compare_two_digit_versions(gradio: Any, tags: dict[str, str]) -> None:
    body = json.dumps({"inputs": [X_TEST[1].tolist(), X_TEST[2].tolist()]})
    table, verdict = gradio.predict("digits", body, tags["mlp"], tags["cnn"], api_name="/compare")
    assert len(table["data"]) == 2 and tags["cnn"] in verdict
    # both answer these two digits alike; the verdict names the measure, the number and the gate's threshold
    assert verdict.startswith("**They agree**: mean top-1 agreement 1.0000 (agreeing means at least 0.99"), verdict


def test_embeddings_matrix_is_symmetric_with_unit_diagonal(gradio: Any, tags: dict[str, str]) -> None:
    body = json.dumps({"texts": ["A man is playing a guitar.", "Someone plays an instrument.",
                                 "The stock market fell."]})
    details = gradio.predict("minilm", body, "routed", "", None, api_name="/ask")
    emb = np.array(details["results"])
    m = emb @ emb.T
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-3)
    assert m[0, 1] > m[0, 2]  # the two music sentences are closer than music and markets
    assert details["model_version"] == tags["minilm"]


def test_bad_input_gives_a_friendly_message_and_the_service_stays_up(gradio: Any, server: Served) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="texts: List should have at least 1 item"):
        gradio.predict("minilm", '{"texts": []}', "routed", "", None, api_name="/ask")
    with pytest.raises(AppError, match="at most 2000 characters"):
        gradio.predict("minilm", json.dumps({"texts": ["x" * 3000]}), "routed", "", None, api_name="/ask")
    with pytest.raises(AppError, match="unknown endpoint 'nope'"):
        gradio.predict("nope", "{}", "routed", "", None, api_name="/ask")
    with pytest.raises(AppError, match="Choose a version to pin"):
        gradio.predict("digits", json.dumps({"inputs": [X_TEST[0].tolist()]}), "pinned", "", None, api_name="/ask")
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def _playground_requests(url: str) -> float:
    lines = [ln for ln in httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
             if ln.startswith("switchyard_requests_total{") and 'source="playground"' in ln
             and 'endpoint="digits"' in ln]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_playground_requests_are_counted_with_their_source(gradio: Any, server: Served) -> None:
    """Its own request, so that it holds alone and in any order (it once passed only after other tests)."""
    before = _playground_requests(server.url)
    digit(gradio, 0)
    assert _playground_requests(server.url) == before + 1


def test_a_browser_can_predict_from_the_playground(server: Served) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground-digits.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"{server.url}/playground/", wait_until="networkidle", timeout=60_000)
        open_tab(page, "digits")  # other tests may add endpoints before it
        page.locator("#run-digits").click()  # its first stored example is chosen
        answer = page.locator("#answer-digits")
        answer.get_by_text("Answered by").wait_for(timeout=30_000)
        page.screenshot(path=str(shot), full_page=True)
        text = answer.inner_text()
        tabs = page.get_by_role("tab").all_inner_texts()
        browser.close()
    assert "Answered by" in text and "digits-mlp" in text
    assert shot.stat().st_size > 20_000
    assert {"digits", "minilm", "About"} <= set(tabs)


def test_the_sketchpad_draws_at_once_and_the_page_loads_nothing_from_outside(server: Served,
                                                                             tags: dict[str, str]) -> None:
    """The sketchpad opened with no tool chosen: a drag drew nothing and Run said it was empty. And a stack
    on a machine without internet must not ask it for anything."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        seen: list[tuple[str, str]] = []
        page.on("response", lambda r: seen.append((str(r.status), r.url)))
        # ERR_ABORTED is the page closing a stream it is done with (Gradio's queue), not a resource missing.
        page.on("requestfailed", lambda r: None if "ERR_ABORTED" in (r.failure or "") else
                seen.append(("failed", r.url)))
        page.goto(f"{server.url}/playground/", wait_until="networkidle", timeout=60_000)
        open_tab(page, "digits")
        page.get_by_label("sketch").filter(visible=True).first.check()
        canvas = page.locator(".sy-sketchpad canvas").filter(visible=True).first
        box = canvas.bounding_box()
        assert box is not None
        x, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
        page.mouse.move(x, top)
        page.mouse.down()
        for i in range(20):  # a vertical stroke, without touching the toolbar first
            page.mouse.move(x, top + i * box["height"] * 0.03)
        page.mouse.up()
        page.locator("#run-digits").click()
        answer = page.locator("#answer-digits")
        answer.get_by_text("Answered by").wait_for(timeout=30_000)
        body = page.locator("body").inner_text()
        # Two versions on the same drawing: the verdict names the task's own measure, the number and the
        # threshold the versions' gate used (not one cut-off for every task).
        page.get_by_text("Compare two versions on this input").filter(visible=True).first.click()
        for label, tag in (("Version A", tags["mlp"]), ("Version B", tags["cnn"])):  # not whatever the store holds
            box = page.get_by_label(label).filter(visible=True).first
            box.fill(tag)
            box.press("Enter")
        page.get_by_role("button", name="Compare", exact=True).filter(visible=True).first.click()
        verdict = page.get_by_text("agreeing means at least").filter(visible=True).first
        verdict.wait_for(timeout=30_000)
        said = verdict.inner_text()
        named = verdict.locator("xpath=..").inner_text()  # the verdict's paragraphs: the versions asked
        requests = list(seen)  # before closing, which aborts Gradio's open event stream
        browser.close()
    assert "empty" not in body
    assert said.startswith(("They agree", "They disagree")) and "mean top-1 agreement" in said, said
    assert tags["mlp"] in named and tags["cnn"] in named  # the two versions chosen
    outside = [(status, url) for status, url in requests if not url.startswith((server.url, "data:"))]
    failed = [(status, url) for status, url in requests if status == "failed" or status.startswith(("4", "5"))]
    assert not outside and not failed, (outside, failed)


def test_screenshots_go_to_the_runs_temp_dir_not_the_checkout() -> None:
    assert not ARTIFACTS.resolve().is_relative_to(ROOT)


def api_latencies(url: str, seconds: float) -> list[float]:
    """One client's request latencies for `seconds`, sequential, as an interactive API user sees them."""
    out: list[float] = []
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as c:
        while time.monotonic() < end:
            began = time.monotonic()
            assert c.post("/v1/digits/predict", json={"inputs": [X_TEST[0].tolist()]}).status_code == 200
            out.append(time.monotonic() - began)
    return out


def test_a_50_megapixel_upload_is_refused_clearly_and_api_latency_holds(server: Served, tmp_path: Path,
                                                                         tags: dict[str, str]) -> None:

    # A second image endpoint, as other tests make: its tab holds the same widgets, hidden.
    made = httpx.post(f"{server.url}/v1/admin/endpoints", headers=AUTH, timeout=60, json={
        "name": "digits-twin", "task": "image-classification", "model": tags["mlp"], "reason": "upload test"})
    assert made.status_code in (201, 409), made.text
    try:
        refused_while_serving(server, tmp_path)
    finally:
        httpx.delete(f"{server.url}/v1/admin/endpoints/digits-twin", params={"reason": "upload test done"},
                     headers=AUTH, timeout=60)


def refused_while_serving(server: Served, tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    big = tmp_path / "big.png"
    Image.new("L", (7072, 7072), 0).save(big)  # 50 megapixels, a 50 kB file: the bomb is in the decoding
    normal = api_latencies(server.url, 3.0)
    during: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"{server.url}/playground/", wait_until="networkidle", timeout=60_000)
        open_tab(page, "digits")
        # Other tests may have added image endpoints: their tabs hold the same widgets, hidden.
        page.locator("input[type=radio][value=upload]:visible").check()
        upload = page.locator(".block:visible", has_text="Upload an image").locator("input[type=file]").first
        loader = threading.Thread(target=lambda: during.extend(api_latencies(server.url, 6.0)))
        loader.start()
        upload.set_input_files(str(big))
        page.wait_for_timeout(1000)
        page.locator("#run-digits").click()
        refusal = page.get_by_text("megapixels", exact=False).first
        refusal.wait_for(timeout=30_000)
        message = refusal.inner_text()
        page.screenshot(path=str(ARTIFACTS / "playground-refused.png"), full_page=True)
        loader.join()
        browser.close()
    p50 = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"refusal: {message!r}; API p50 {p50(normal) * 1000:.1f} ms before, {p50(during) * 1000:.1f} ms during")
    assert "50.0 megapixels" in message and "limits.max_image_pixels" in message
    assert p50(during) <= 2 * p50(normal) + 0.002  # + 2 ms: a p50 of a millisecond or two is mostly noise
    assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
