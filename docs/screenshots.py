"""The console and playground screenshots under docs/, taken with traffic flowing.

    python docs/screenshots.py --service http://127.0.0.1:3000 --console http://127.0.0.1:8501 --token "$TOKEN"

With `make serve` running: digits goes to a 90/10 canary of its int8 CNN, about 20 requests/s of digits and
minilm flow while Chromium (Debian's, 1400x1000) visits Overview, Live metrics, Monitoring, Rollouts (with a
rollout running) and the playground; the split is put back afterwards.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from playwright.sync_api import Page, sync_playwright

DOCS = Path(__file__).resolve().parent
ROW = [0.0] * 20 + [16.0] * 10 + [4.0] * 34


def traffic(service: str, stop: threading.Event) -> None:
    """About 20 requests/s of digits (some of them unlike the validation data: drift to see) and minilm."""
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=service, timeout=30) as c:
        while not stop.is_set():
            row = (rng.random(64) * 16).round().tolist() if rng.random() < 0.3 else ROW
            c.post("/v1/digits/predict", json={"inputs": [row]})
            c.post("/v1/minilm/embed", json={"texts": [f"a sentence at {time.time():.3f}"]})
            time.sleep(0.1)


def shoot(page: Page, url: str, heading: str, name: str, settle_s: float = 8) -> None:
    page.goto(url, wait_until="networkidle", timeout=60_000)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    page.wait_for_timeout(settle_s * 1000)
    page.screenshot(path=str(DOCS / name))
    print(f"wrote docs/{name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", default="http://127.0.0.1:3000")
    parser.add_argument("--console", default="http://127.0.0.1:8501")
    parser.add_argument("--token", required=True, help="an admin token (make serve: .state/admin-token)")
    args = parser.parse_args()
    auth = {"Authorization": f"Bearer {args.token}"}
    admin = httpx.Client(base_url=args.service, headers=auth, timeout=30)
    before = admin.get("/v1/admin/deployments/digits").json()["versions"]
    tags = [m["tag"] for m in admin.get("/v1/admin/models").json() if m["labels"].get("family") == "digits"]
    stable = next(v["tag"] for v in before if v["role"] == "stable")
    canary = next(t for t in tags if t != stable)
    split = [{"tag": stable, "role": "stable", "weight": 90}, {"tag": canary, "role": "canary", "weight": 10}]
    admin.put("/v1/admin/deployments/digits", json={"versions": split, "reason": "screenshots"}).raise_for_status()
    stop = threading.Event()
    workers = [threading.Thread(target=traffic, args=(args.service, stop)) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(20)  # a few scrapes of traffic for the charts
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            shoot(page, f"{args.console}/", "Overview", "console-overview.png")
            shoot(page, f"{args.console}/live", "Live metrics", "console-live-metrics.png", settle_s=12)
            shoot(page, f"{args.console}/monitoring", "Monitoring", "console-monitoring.png")
            admin.put("/v1/admin/deployments/digits", json={"versions": [split[0] | {"weight": 100}],
                                                             "reason": "screenshots: before a rollout"})
            admin.post("/v1/admin/rollouts/digits", json={"tag": canary, "reason": "screenshots", "policy": {
                "steps": [10, 50, 100], "min_requests": 100000, "interval_s": 1}}).raise_for_status()
            shoot(page, f"{args.console}/rollouts", "Rollouts", "console-rollouts.png", settle_s=10)
            page.goto(f"{args.service}/playground/", wait_until="networkidle", timeout=60_000)
            page.get_by_role("tab", name="digits", exact=True).click()
            page.locator("#run-digits").click()
            page.locator("#answer-digits").get_by_text("Answered by").wait_for(timeout=30_000)
            page.screenshot(path=str(DOCS / "playground-digits.png"), full_page=True)
            print("wrote docs/playground-digits.png")
            browser.close()
    finally:
        stop.set()
        for w in workers:
            w.join()
        admin.post("/v1/admin/rollouts/digits/abort", json={"reason": "screenshots: done"})
        admin.put("/v1/admin/deployments/digits", json={"versions": before, "reason": "screenshots: put back"})


if __name__ == "__main__":
    main()
