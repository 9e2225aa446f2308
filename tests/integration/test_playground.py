"""The Gradio playground on the served stack: gradio_client, and a real Chromium page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bentos.playground import _test_examples
from tests.conftest import ROOT
from tests.integration.conftest import deploy
from tests.servers import Served

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


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


def digit(gradio: Any, example: str, mode: str = "routed", pinned: str | None = None, key: str = "") -> dict[str, Any]:
    *_, details = gradio.predict("example", None, None, example, mode, key, pinned, api_name="/predict_digit")
    return details  # type: ignore[no-any-return]


def test_playground_answers_200(server: Served) -> None:
    r = httpx.get(f"{server.url}/playground/", timeout=30, follow_redirects=True)
    assert r.status_code == 200 and "gradio" in r.text.lower()


def test_known_digits_are_classified_and_the_version_is_named(gradio: Any, tags: dict[str, str]) -> None:
    _, labels = _test_examples()
    answers = [digit(gradio, f"example {i}: a {labels[i]}") for i in range(10)]
    correct = sum(a["label"] == a["true_label"] for a in answers)
    assert correct >= 9, answers
    assert all(a["model_version"] == tags["mlp"] and a["route"] == "stable" for a in answers)


def test_pinned_mode_reaches_live_and_stored_versions(gradio: Any, tags: dict[str, str]) -> None:
    _, labels = _test_examples()
    example = f"example 0: a {labels[0]}"
    for tag in (tags["mlp"], tags["cnn_int8"]):  # cnn_int8 is not live: loaded as a pin-only preview
        answer = digit(gradio, example, mode="pinned", pinned=tag)
        assert answer["model_version"] == tag and answer["route"] == "pinned"


def test_compare_two_digit_versions(gradio: Any, tags: dict[str, str]) -> None:
    _, labels = _test_examples()
    left, right, verdict = gradio.predict("example", None, None, f"example 1: a {labels[1]}", tags["mlp"],
                                          tags["cnn"], api_name="/compare_digits")
    assert left["label"] and right["label"] and ("agree" in verdict)


def test_embeddings_matrix_is_symmetric_with_unit_diagonal(gradio: Any, tags: dict[str, str]) -> None:
    text = "A man is playing a guitar.\nSomeone plays an instrument.\nThe stock market fell."
    _, _info, details = gradio.predict(text, "routed", "", None, api_name="/embed")
    m = np.array(details["similarity"])
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-3)
    assert m[0, 1] > m[0, 2]  # the two music sentences are closer than music and markets
    assert details["model_version"] == tags["minilm"]


def test_bad_input_gives_a_friendly_message_and_the_service_stays_up(gradio: Any, server: Served) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Enter 2 to 10 sentences"):
        gradio.predict("only one sentence", "routed", "", None, api_name="/embed")
    with pytest.raises(AppError, match="sketchpad is empty"):
        gradio.predict("sketch", None, None, None, "routed", "", None, api_name="/predict_digit")
    with pytest.raises(AppError, match="longer than"):
        gradio.predict("short\n" + "x" * 3000, "routed", "", None, api_name="/embed")
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_playground_requests_are_counted_with_their_source(gradio: Any, server: Served) -> None:
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'source="playground"' in metrics


def test_a_browser_can_predict_from_the_playground(server: Served) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground-digits.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"{server.url}/playground/", wait_until="networkidle", timeout=60_000)
        page.locator("#predict-digit").click()
        answer = page.locator("#digit-answer")
        answer.get_by_text("Predicted").wait_for(timeout=30_000)
        page.screenshot(path=str(shot), full_page=True)
        text = answer.inner_text()
        browser.close()
    assert "Predicted" in text and "Version" in text
    assert shot.stat().st_size > 20_000
    assert any(str(d) in text for d in range(10))


def test_image_to_pixels_matches_the_dataset_scale() -> None:
    from bentos.families.digits import image_to_pixels

    canvas = np.zeros((280, 280, 4), np.uint8)
    canvas[60:220, 130:150] = (0, 0, 0, 255)  # a black vertical stroke on a transparent canvas: a "1"
    pixels = np.array(image_to_pixels(canvas)).reshape(8, 8)
    assert pixels.max() == 16 and pixels.min() == 0
    assert pixels[:, 3:5].sum() > pixels[:, :2].sum() + pixels[:, 6:].sum()
    with pytest.raises(ValueError, match="empty"):
        image_to_pixels(np.zeros((50, 50, 4), np.uint8))


def test_the_screenshot_directory_is_ignored_by_git() -> None:
    assert "test-artifacts/" in Path(ROOT / ".gitignore").read_text()
