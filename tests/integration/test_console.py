"""The Streamlit console against a real served Switchyard: AppTest per page, and a real browser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from models.families.digits import splits
from tests.conftest import ROOT, artifacts_dir
from tests.integration.conftest import AUTH, PEOPLE, TOKEN, console_on_loopback, deploy
from tests.servers import Served, free_port

pytestmark = pytest.mark.integration
PAGES = ROOT / "admin" / "views"  # not pages/: Streamlit would serve a pages/ dir directly, around app.py
ARTIFACTS = artifacts_dir()
ROWS = splits()["test"][0]


@pytest.fixture
def console_env(single_worker: Served, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.setenv("SWITCHYARD_SERVICE_URL", single_worker.url)
    monkeypatch.setenv("SWITCHYARD_ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("PROMETHEUS_URL", raising=False)
    with console_on_loopback():
        yield single_worker


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def traffic(url: str, n: int) -> Counter[str]:
    async def run() -> Counter[str]:
        seen: Counter[str] = Counter()
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            async def one(i: int) -> None:
                r = await c.post("/v1/digits/predict", json={"inputs": [ROWS[i % len(ROWS)].tolist()]})
                seen[r.headers["x-model-version"]] += 1
            for start in range(0, n, 50):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
        return seen

    return asyncio.run(run())


def test_overview_shows_health_and_splits(console_env: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=console_env.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)])
    at = page("overview")
    assert [m.value for m in at.metric][:2] == ["yes", "ok"]
    assert any("/digits" in s.value for s in at.subheader)


def test_models_lists_the_registry_with_lineage(console_env: Served, tags: dict[str, str],
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    at = page("models")
    # the compare table mixed names and numbers in a column: Streamlit logged an ArrowTypeError on every render
    assert not [r for r in caplog.records if "Arrow" in r.getMessage()], caplog.text[-2000:]
    table = at.dataframe[0].value
    assert {tags["mlp"], tags["cnn"]} <= set(table["tag"])
    row = table[table["tag"] == tags["cnn"]].iloc[0]
    assert row["task"] == "image-classification" and row["model"] == "digits-cnn"
    assert "accuracy" in row["quality"] and "→ fp32" in row["lineage"]
    at.multiselect(key="tasks").set_value(["text-embedding"]).run()
    assert set(at.dataframe[0].value["model"]) == {"minilm"}


def test_series_names_survive_any_version_suffix() -> None:
    import altair as alt
    import pandas as pd

    from admin.metrics import series_name

    names = [series_name("digits", tag) for tag in ("m:Q", "m:abc123", "m.v1:N", "m[0]:O", "m:T")]
    assert len(set(names)) == len(names) and not any(":" in n for n in names)
    frame = pd.DataFrame({n: [1.0, 2.0] for n in names}).reset_index().melt("index")
    alt.Chart(frame).mark_line().encode(x="index", y="value", color="variable").to_dict()
    for name in names:  # as Streamlit encodes each column
        alt.Chart(pd.DataFrame({name: [1.0]})).mark_line().encode(y=alt.Y(name)).to_dict()


def test_canary_slider_changes_the_split_and_traffic_follows(console_env: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=console_env.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)])
    at = page("deployments")
    at.selectbox(key="endpoint").set_value("digits")
    at.selectbox(key="canary_tag").set_value(tags["cnn"])
    at.slider(key="canary_pct").set_value(30)
    at.text_input(key="split_reason").input("console test: 30 % to the CNN")
    at.button(key="split_go").click().run()
    assert any("Tick the confirmation" in w.value for w in at.warning)  # nothing changes unconfirmed
    at.checkbox(key="split_confirm").check()
    at.button(key="split_go").click().run()
    assert not at.exception and any("is live" in s.value for s in at.success), [e.value for e in at.error]
    current = httpx.get(f"{console_env.url}/v1/admin/deployments/digits", headers=AUTH).json()
    assert {v["tag"]: v["weight"] for v in current["versions"]} == {tags["mlp"]: 70, tags["cnn"]: 30}
    assert current["revisions"][0]["reason"] == "console test: 30 % to the CNN"
    seen = traffic(console_env.url, 600)
    assert abs(seen[tags["cnn"]] - 180) <= 4 * math.sqrt(600 * 0.3 * 0.7), seen


def test_a_shadow_with_a_sample_from_the_console(console_env: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=console_env.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)])
    at = page("deployments")
    at.selectbox(key="endpoint").set_value("digits")
    at.selectbox(key="shadow_tag").set_value(tags["cnn"]).run()
    at.slider(key="shadow_sample").set_value(25)
    at.text_input(key="split_reason").input("console test: watch the CNN on a quarter")
    at.checkbox(key="split_confirm").check()
    at.button(key="split_go").click().run()
    assert not at.exception and any("is live" in s.value for s in at.success), [e.value for e in at.error]
    current = httpx.get(f"{console_env.url}/v1/admin/deployments/digits", headers=AUTH).json()
    assert current["shadow_sample"] == 25 and {v["tag"]: v["role"] for v in current["versions"]} == \
        {tags["mlp"]: "stable", tags["cnn"]: "shadow"}


def test_promote_and_roll_back_from_the_console(console_env: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=console_env.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)])
    at = page("deployments")
    at.text_input(key="promote_reason").input("promote from console")
    at.checkbox(key="promote_confirm").check()
    at.button(key="promote_go").click().run()
    assert any("Promoted" in s.value for s in at.success)
    at = page("deployments")
    options = at.selectbox(key="rollback_to").options
    at.selectbox(key="rollback_to").set_value(options[0])
    at.text_input(key="rollback_reason").input("roll back from console")
    at.checkbox(key="rollback_confirm").check()
    at.button(key="rollback_go").click().run()
    assert any("Rolled back" in s.value for s in at.success)
    audit = page("audit").dataframe[0].value
    assert {"promote from console", "roll back from console"} <= set(audit["why"])


def chart_series(at: AppTest) -> dict[str, set[str]]:
    """Each chart's plotted value -> the series its data holds, read from what Streamlit sends the browser; a
    series must be coloured by name with a legend that shows it."""
    import pyarrow as pa

    out: dict[str, set[str]] = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        data = {d.name: pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets}
        for layer in spec.get("layer", [spec]):
            color = layer.get("encoding", {}).get("color")
            if color is not None:
                assert color["field"] == "series" and color["legend"]["labelLimit"] == 0, color
                out[layer["encoding"]["y"]["field"]] = set(data[layer["data"]["name"]]["series"])
    return out


def test_live_metrics_draws_a_labelled_series_per_version(console_env: Served, tags: dict[str, str]) -> None:
    from admin.metrics import series_name

    with httpx.Client(base_url=console_env.url) as c:
        assert deploy(c, "digits", [(tags["mlp"], "stable", 50), (tags["cnn"], "canary", 50)]).status_code == 200
    at = AppTest.from_file(str(PAGES / "live.py"), default_timeout=60)
    at.run()
    want = {series_name("digits", tags["mlp"]), series_name("digits", tags["cnn"])}
    for _ in range(20):  # two scrapes with traffic from both versions between them, however slow the machine
        traffic(console_env.url, 100)
        at.run()
        assert not at.exception, at.exception
        drawn = chart_series(at)
        if want <= drawn.get("rps", set()) and want <= drawn.get("p95_ms", set()):
            break
    else:
        raise AssertionError(f"series drawn: {drawn}; wanted {want} in requests/s and p95")
    titles = [m.value for m in at.markdown]
    assert "**requests/s**" in titles and "**p95 latency (ms)**" in titles


def test_an_api_key_is_made_used_and_revoked_on_the_keys_page(console_env: Served) -> None:
    name = f"console-{os.getpid()}"
    at = page("keys")
    at.text_input(key="key_name").input(name)
    at.number_input(key="key_rate").set_value(50.0)
    at.number_input(key="key_weight").set_value(2.5)
    at.text_input(key="key_reason").input("console test")
    next(b for b in at.button if b.label == "Create key").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"Key {name} created" in m.value for m in at.success)
    secret = at.code[0].value
    row = {"inputs": [ROWS[0].tolist()]}

    def status(key: str) -> int:
        return httpx.post(f"{console_env.url}/v1/digits/predict", json=row, headers={"X-API-Key": key},
                          timeout=30).status_code

    assert status(secret) == 200 and status(secret + "x") == 401
    at = page("keys")
    table = at.dataframe[0].value
    assert list(table[table["name"] == name]["weight"]) == [2.5]
    at.selectbox(key="key_target").set_value(name).run()
    at.number_input(key="key_new_weight").set_value(4.0)
    at.text_input(key="key_change_reason").input("console test: heavier")
    at.button(key="key_save").click().run()
    assert any("weight 4" in m.value for m in at.success), [e.value for e in at.error]
    keys = httpx.get(f"{console_env.url}/v1/admin/keys", headers=AUTH, timeout=30).json()
    assert [k["weight"] for k in keys if k["name"] == name and k["active"]] == [4.0]
    at.text_input(key="key_change_reason").input("console test: done")
    at.button(key="key_revoke").click().run()
    assert any(f"{name} is revoked" in m.value for m in at.success), [e.value for e in at.error]
    end = time.monotonic() + 30
    while status(secret) != 401:
        assert time.monotonic() < end, "a revoked key still served after 30 s"
        time.sleep(0.2)


def test_a_users_endpoint_is_created_in_the_console_and_shows_everywhere(console_env: Served,
                                                                          tmp_path: Path) -> None:
    from bench.user_models import two_input_graph
    from models.registry import register_file

    tag = register_file("console-adder", two_input_graph(tmp_path), task="tensor", preprocess={})
    at = page("endpoints")
    at.selectbox(key="ep_task").set_value("tensor").run()
    at.text_input(key="ep_name").input("console-adder")
    at.selectbox(key="ep_model").set_value(tag)
    at.text_input(key="ep_reason").input("from the console")
    next(b for b in at.button if b.label == "Create").click().run()
    assert any("serves at POST /v1/console-adder/infer" in s.value for s in at.success), [e.value for e in at.error]
    body = {"inputs": {"a": [[1.0, 2.0, 3.0]], "b": [[1.0, 1.0, 1.0]]}}
    for _ in range(50):
        assert httpx.post(f"{console_env.url}/v1/console-adder/infer", json=body).status_code == 200
    assert "console-adder" in set(page("endpoints").dataframe[0].value["endpoint"])
    at = page("deployments")
    at.selectbox(key="endpoint").set_value("console-adder").run()
    assert not at.exception and any("tensor" in m.value for m in at.markdown)
    assert tag in set(at.dataframe[0].value["version"])
    live = AppTest.from_file(str(PAGES / "live.py"), default_timeout=60)
    live.run()
    for _ in range(50):
        httpx.post(f"{console_env.url}/v1/console-adder/infer", json=body)
    time.sleep(1)
    live.run()
    assert not live.exception and "**requests/s**" in [m.value for m in live.markdown]


def test_audit_filters_and_downloads(console_env: Served) -> None:
    at = page("audit")
    at.multiselect(key="audit_action").set_value(["deploy"]).run()
    assert set(at.dataframe[0].value["action"]) == {"deploy"}
    assert at.get("download_button")


@pytest.mark.parametrize("name", ["overview", "models", "endpoints", "deployments", "live", "audit"])
def test_service_down_gives_a_message_not_a_traceback(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SWITCHYARD_ADMIN_TOKEN", TOKEN)
    at = page(name)
    assert any("Cannot reach the service" in e.value for e in at.error)


def test_wrong_token_is_explained(console_env: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_ADMIN_TOKEN", "not-the-token")
    at = page("deployments")
    assert any("refused the admin token" in e.value for e in at.error)


def test_refused_changes_are_shown_in_plain_words(console_env: Served, tags: dict[str, str]) -> None:
    from admin.client import AdminClient, ConsoleError
    from admin.settings import ConsoleSettings

    api = AdminClient(ConsoleSettings())
    with pytest.raises(ConsoleError, match=r"Refused \(422\): versions\[1\].tag: model 'digits-nope:1' is not"):
        api.deploy("digits", [{"tag": tags["mlp"], "role": "stable", "weight": 90},
                              {"tag": "digits-nope:1", "role": "canary", "weight": 10}], False, "x")
    with pytest.raises(ConsoleError, match="must sum to 100, got 80"):
        api.deploy("digits", [{"tag": tags["mlp"], "role": "stable", "weight": 80}], False, "x")


def test_unreachable_prometheus_falls_back_to_the_service(console_env: Served,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_URL", f"http://127.0.0.1:{free_port()}")
    at = page("live")
    assert any("unreachable" in w.value for w in at.warning)


def not_blank(png: Path) -> bool:
    """Real content: the grey levels vary (tables are drawn on a canvas, not as text)."""
    from PIL import Image, ImageStat

    with Image.open(png) as img:
        return bool(ImageStat.Stat(img.convert("L")).stddev[0] > 15 and png.stat().st_size > 20_000)


NOT_RERUNNING = "() => document.querySelector('[data-stale=\"true\"]') === null"


def settled_shot(page: Any, path: Path, tries: int = 3) -> None:
    """A full-page screenshot between two reruns. Streamlit fades every element while a page reruns (the live
    pages rerun every 3 s), and a shot taken then was nearly blank (a grey-level spread of 11, under not_blank's
    15): wait until no element is stale, and shoot again if a rerun began in between."""
    for _ in range(tries):
        page.wait_for_function(NOT_RERUNNING, timeout=30_000)
        page.screenshot(path=str(path), full_page=True)
        if not_blank(path):
            return


CONSOLE_LOGS: dict[str, Path] = {}  # each started console's URL -> its Streamlit log (stdout and stderr)


@contextlib.contextmanager
def start_console(service_url: str, token: str | None) -> Iterator[str]:
    """`streamlit run admin/app.py` on a free port; with `token` its one user is signed in (as `make serve`).
    Stopped on leaving, whatever happened (a generator closed early left one running to the end of the suite)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_ADMIN_TOKEN"}
    env.update(SWITCHYARD_SERVICE_URL=service_url, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               **({"SWITCHYARD_ADMIN_TOKEN": token} if token else {}))
    url = f"http://127.0.0.1:{port}"
    log = CONSOLE_LOGS[url] = Path(tempfile.mkdtemp(prefix="switchyard-console-")) / "streamlit.log"
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "admin" / "app.py"),
                             "--server.headless", "true", "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--client.toolbarMode", "minimal"],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    for _ in range(100):
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def streamlit_app(single_worker: Served) -> Iterator[str]:
    with start_console(single_worker.url, TOKEN) as url:
        yield url


@pytest.fixture
def shared_console(single_worker: Served) -> Iterator[str]:
    """A console with no token of its own: everyone signs in."""
    with start_console(single_worker.url, None) as url:
        yield url


def chart_texts(pg: Any) -> list[list[str]]:
    """The words of each Vega chart on the page (Streamlit draws them as SVG): axis labels and legends."""
    charts = pg.locator("[data-testid='stVegaLiteChart']")
    return [[t.strip() for t in charts.nth(i).locator("svg text").all_text_contents() if t.strip()]
            for i in range(charts.count())]


def choose(pg: Any, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`. Its list is virtualized: only the options in view are in
    the page, so one far down (the store holds more versions when other tests ran first) is typed to the top."""
    pg.get_by_label(label).click()
    pg.keyboard.type(option)
    pg.get_by_role("option", name=option, exact=True).click()


def rollout_in_browser(pg: Any, console: str, served: Served, tags: dict[str, str]) -> None:
    """Start a rollout on the Rollouts page: the page shows it at once, not the empty state and the form."""
    with httpx.Client(base_url=served.url, headers=AUTH) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)], reason="browser: before a rollout")
        try:
            pg.goto(f"{console}/rollouts", wait_until="networkidle", timeout=60_000)
            choose(pg, "Endpoint", "digits")
            # The form (an earlier test's finished rollout may be shown above it, instead of the empty state).
            pg.get_by_role("button", name="Start rollout").wait_for(timeout=30_000)
            choose(pg, "Canary version", tags["cnn"])
            pg.get_by_label("Steps (%)").fill("20, 100")
            pg.get_by_label("Min requests per step").fill("1000000")  # it stays at its first step
            pg.get_by_label("Reason (recorded in the audit log)").fill("browser: roll out the CNN")
            pg.get_by_role("button", name="Start rollout").click()
            pg.get_by_text("started at 20 %").wait_for(timeout=30_000)
            pg.wait_for_timeout(1000)
            assert pg.get_by_text("No rollout on this endpoint yet").count() == 0
            assert pg.get_by_role("button", name="Start rollout").count() == 0
            assert pg.get_by_text("running").count() >= 1
        finally:
            c.post("/v1/admin/rollouts/digits/abort", json={"reason": "browser: done"})
            deploy(c, "digits", [(tags["mlp"], "stable", 100)], reason="browser: after a rollout")


def clipped_chart_texts(pg: Any) -> list[str]:
    """Chart words (legend entries, ticks) that run past their chart's edge, where the page cuts them."""
    return list(pg.evaluate("""() => [...document.querySelectorAll("[data-testid='stVegaLiteChart']")]
        .flatMap((chart) => {
            const edge = chart.getBoundingClientRect().right + 1;
            return [...chart.querySelectorAll("svg text")]
                .filter((t) => t.textContent.trim() && t.getBoundingClientRect().right > edge)
                .map((t) => t.textContent);
        })"""))


def canary_in_browser(pg: Any, tag: str, reason: str) -> None:
    """On the Deployments page: `tag` as a 10 % canary, with a reason and the confirmation."""
    choose(pg, "Canary version", tag)
    pg.get_by_label("Reason (recorded in the audit log)").first.fill(reason)
    pg.get_by_label("Reason (recorded in the audit log)").first.press("Enter")
    pg.get_by_text("I confirm this change").first.click()
    pg.get_by_role("button", name="Apply").click()
    pg.get_by_text("is live").wait_for(timeout=30_000)


def test_browser_changes_the_split_and_every_page_renders(streamlit_app: str, single_worker: Served,
                                                          tags: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    from tests.integration.test_playground import CHROMIUM_FLAGS

    with httpx.Client(base_url=single_worker.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)])
    ARTIFACTS.mkdir(exist_ok=True)
    asked: list[str] = []  # every URL any page asks for: a stack on a machine without internet loads nothing outside
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.on("request", lambda request: asked.append(request.url))
        pg.goto(f"{streamlit_app}/deployments", wait_until="networkidle", timeout=60_000)
        pg.get_by_text("Change the split").wait_for(timeout=30_000)
        canary_in_browser(pg, tags["cnn"], "browser: 10 % to the CNN")
        current = httpx.get(f"{single_worker.url}/v1/admin/deployments/digits", headers=AUTH).json()
        assert {v["tag"]: v["weight"] for v in current["versions"]} == {tags["mlp"]: 90, tags["cnn"]: 10}
        assert pg.get_by_role("button", name="Deploy").count() == 0  # Streamlit's cloud button is hidden
        for path, title in [("", "Overview"), ("models", "Models"), ("endpoints", "Endpoints"),
                            ("deployments", "Deployments"), ("rollouts", "Rollouts"), ("live", "Live metrics"),
                            ("monitoring", "Monitoring"), ("audit", "Audit log")]:
            pg.goto(f"{streamlit_app}/{path}", wait_until="networkidle", timeout=60_000)
            pg.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
            if path == "live":  # keep traffic flowing until two scrapes have drawn the charts
                for _ in range(30):
                    for row in ROWS[:20]:  # sync: playwright's own loop owns this thread
                        httpx.post(f"{single_worker.url}/v1/digits/predict", json={"inputs": [row.tolist()]})
                    if pg.get_by_text("p95 latency (ms)").count():
                        break
                    pg.wait_for_timeout(1000)
            pg.wait_for_timeout(1500)
            shot = ARTIFACTS / f"console-{title.lower().replace(' ', '-')}.png"
            settled_shot(pg, shot)
            assert pg.locator("[data-testid='stException']").count() == 0
            assert not_blank(shot), f"{shot} looks blank"
            if path == "":  # the split's weights are on screen, next to their roles
                split = pg.locator("table").first.inner_text()
                assert "weight %" in split and "90" in split and "10" in split, split
            if path == "live":
                charts = chart_texts(pg)
                from admin.metrics import series_name

                series = {series_name("digits", t) for t in (tags["mlp"], tags["cnn"])}
                for legend in charts:  # every chart names every series it draws, in full
                    assert not any(t.endswith("…") for t in legend), legend
                assert not clipped_chart_texts(pg), clipped_chart_texts(pg)
                assert any(series <= set(texts) for texts in charts), charts
                assert not any("0.000000" in t or "e+" in t for texts in charts for t in texts), charts
            if path == "monitoring":  # the service's words about the payload log, said once
                said = pg.get_by_text("payload logging is off").all_inner_texts()
                assert len(said) == 1 and said[0].count("SWITCHYARD_PAYLOAD_LOG") == 1, said
        rollout_in_browser(pg, streamlit_app, single_worker, tags)
        browser.close()
    log = CONSOLE_LOGS[streamlit_app].read_text()
    assert "Traceback" not in log and "ArrowTypeError" not in log, log[-3000:]  # ordinary use logs nothing
    outside = [u for u in asked if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))]
    assert not outside, outside


def set_split(tag: str, pct: int, reason: str) -> AppTest:
    at = page("deployments")
    at.selectbox(key="endpoint").set_value("digits")
    at.selectbox(key="canary_tag").set_value(tag)
    at.slider(key="canary_pct").set_value(pct)
    at.text_input(key="split_reason").input(reason)
    at.checkbox(key="split_confirm").check()
    at.button(key="split_go").click().run()
    assert any("is live" in s.value for s in at.success), [e.value for e in at.error]
    return at


def confirm(prefix: str, reason: str, choose_first: bool = False) -> AppTest:
    at = page("deployments")
    if choose_first:
        at.selectbox(key="rollback_to").set_value(at.selectbox(key="rollback_to").options[0])
    at.text_input(key=f"{prefix}_reason").input(reason)
    at.checkbox(key=f"{prefix}_confirm").check()
    at.button(key=f"{prefix}_go").click().run()
    assert at.success and not at.error
    return at


def test_the_whole_canary_release_from_the_console(console_env: Served, tags: dict[str, str]) -> None:
    """Acceptance: canary at 10 %, both versions' live metrics, 50 %, promote, roll back; all audited."""
    with httpx.Client(base_url=console_env.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)], reason="baseline before the release")
    set_split(tags["cnn"], 10, "flow 1: CNN canary at 10 %")
    live = AppTest.from_file(str(PAGES / "live.py"), default_timeout=60)
    live.run()
    traffic(console_env.url, 400)
    time.sleep(1)
    live.run()
    assert not live.exception and not live.info  # charts, not "collecting"
    stats = httpx.get(f"{console_env.url}/v1/admin/stats?window=60", headers=AUTH).json()["endpoints"]["digits"]
    assert stats[tags["mlp"]]["requests"] > 0 and stats[tags["cnn"]]["requests"] > 0
    set_split(tags["cnn"], 50, "flow 3: CNN canary at 50 %")
    confirm("promote", "flow 4: promote the CNN")
    current = httpx.get(f"{console_env.url}/v1/admin/deployments/digits", headers=AUTH).json()
    assert [(v["tag"], v["role"], v["weight"]) for v in current["versions"]] == [(tags["cnn"], "stable", 100)]
    confirm("rollback", "flow 5: roll back", choose_first=True)
    current = httpx.get(f"{console_env.url}/v1/admin/deployments/digits", headers=AUTH).json()
    assert {v["tag"]: v["weight"] for v in current["versions"]} == {tags["mlp"]: 50, tags["cnn"]: 50}
    audit = page("audit").dataframe[0].value
    flow = [why for why in reversed(list(audit["why"])) if str(why).startswith("flow ")]
    assert flow == ["flow 1: CNN canary at 10 %", "flow 3: CNN canary at 50 %", "flow 4: promote the CNN",
                    "flow 5: roll back"]


def test_the_rollout_form_sends_the_generation_checks_and_shows_why_they_do_not_apply(console_env: Served,
                                                                                     tags: dict[str, str]) -> None:
    """The form offers every check the API has; on digits (no output guardrails, not a language model) the API's
    422 names what is missing, and the console shows it instead of starting anything."""
    with httpx.Client(base_url=console_env.url) as c:
        state = c.get("/v1/admin/rollouts/digits", headers=AUTH)
        if state.status_code == 200 and state.json()["status"] in ("running", "paused"):
            c.post("/v1/admin/rollouts/digits/abort", json={"reason": "clean slate"}, headers=AUTH)
    at = page("rollouts")
    at.selectbox(key="rollout_endpoint").set_value("digits").run()
    checks = at.multiselect(key="rollout_checks")
    assert {"errors", "latency", "agreement", "drift", "divergence", "violations"} <= set(checks.options)
    for chosen, named in ((["errors", "violations"], "guardrails.output"), (["divergence"], "divergence")):
        at.selectbox(key="rollout_tag").set_value(tags["cnn"])
        at.multiselect(key="rollout_checks").set_value(chosen)
        at.number_input(key="rollout_violation_margin").set_value(0.02)
        at.number_input(key="rollout_max_token_kl").set_value(0.1)
        at.text_input(key="start_reason").input("console: a check that does not apply")
        next(b for b in at.button if b.label == "Start rollout").click().run()
        assert any(named in e.value for e in at.error), ([e.value for e in at.error], chosen)
        assert not at.success
    with httpx.Client(base_url=console_env.url) as c:
        state = c.get("/v1/admin/rollouts/digits", headers=AUTH)
        assert state.status_code == 404 or state.json()["status"] not in ("running", "paused"), state.text


def test_rollouts_page_starts_shows_evidence_pauses_and_aborts(console_env: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=console_env.url) as c:
        state = c.get("/v1/admin/rollouts/digits", headers=AUTH)
        if state.status_code == 200 and state.json()["status"] in ("running", "paused"):
            c.post("/v1/admin/rollouts/digits/abort", json={"reason": "clean slate"}, headers=AUTH)
        deploy(c, "digits", [(tags["mlp"], "stable", 100)], reason="before the console rollout")
    at = page("rollouts")
    at.selectbox(key="rollout_endpoint").set_value("digits").run()
    at.selectbox(key="rollout_tag").set_value(tags["cnn"])
    at.text_input(key="rollout_steps").input("20, 100")
    at.number_input(key="rollout_min_requests").set_value(1_000_000)
    at.number_input(key="rollout_interval").set_value(0.5)
    at.text_input(key="start_reason").input("console: roll out the CNN")
    next(b for b in at.button if b.label == "Start rollout").click().run()
    assert any("started at 20 %" in s.value for s in at.success), [e.value for e in at.error]
    # the rollout as it now stands, at once: no "no rollout yet" and no start form under the message
    assert not any("No rollout on this endpoint yet" in i.value for i in at.info)
    assert not any(b.label == "Start rollout" for b in at.button)
    assert any("status **running**" in m.value and "step **20 %**" in m.value for m in at.markdown)

    traffic(console_env.url, 200)
    time.sleep(1.5)
    at = page("rollouts")
    assert not at.exception and not at.error
    assert any("canary requests this step" in str(p.proto) for p in at.get("progress"))
    evidence = at.dataframe[0].value
    assert {"errors", "latency"} <= set(evidence["check"]) and "p-value" in evidence.columns
    assert "start" in set(at.dataframe[1].value["decision"])

    at.text_input(key="rollout_reason").input("console: hold on")
    at.button(key="rollout_pause").click().run()
    assert any("paused" in s.value for s in at.success)
    at = page("rollouts")
    at.button(key="rollout_resume").click().run()
    assert any("running" in s.value for s in at.success)
    at = page("rollouts")
    at.text_input(key="rollout_reason").input("console: stop")
    at.button(key="rollout_abort").click().run()
    assert any("aborted" in s.value for s in at.success)
    current = httpx.get(f"{console_env.url}/v1/admin/deployments/digits", headers=AUTH).json()
    assert [(v["tag"], v["weight"]) for v in current["versions"]] == [(tags["mlp"], 100)]


def test_people_sign_in_viewers_see_no_change_buttons_and_an_operators_change_is_theirs(
        shared_console: str, single_worker: Served, tags: dict[str, str]) -> None:
    """A console without a token of its own: each person signs in with theirs, in their own session."""
    from playwright.sync_api import Page, sync_playwright

    from tests.integration.test_playground import CHROMIUM_FLAGS

    def sign_in(pg: Page, token: str) -> None:
        pg.goto(shared_console, wait_until="networkidle", timeout=60_000)
        pg.get_by_role("heading", name="Sign in to Switchyard").wait_for(timeout=30_000)
        pg.get_by_label("Your admin token", exact=True).fill(token)
        pg.get_by_role("button", name="Sign in").click()
        pg.get_by_text("Signed in as").wait_for(timeout=30_000)

    def open_page(pg: Page, title: str) -> None:  # the sidebar keeps the session; a reload would not
        pg.get_by_role("link", name=title).first.click()
        pg.get_by_role("heading", name=title).first.wait_for(timeout=30_000)
        pg.wait_for_timeout(1500)

    with httpx.Client(base_url=single_worker.url) as c:
        deploy(c, "digits", [(tags["mlp"], "stable", 100)], reason="before sign-in test")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        viewer = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        viewer.goto(shared_console, wait_until="networkidle", timeout=60_000)
        viewer.get_by_label("Your admin token", exact=True).fill("wrong")
        viewer.get_by_role("button", name="Sign in").click()
        viewer.get_by_text("refused the admin token").wait_for(timeout=30_000)
        sign_in(viewer, PEOPLE["vic"][0])
        assert viewer.get_by_text("Signed in as vic (viewer)").count() == 1
        assert viewer.get_by_role("link", name="API keys").count() == 0
        open_page(viewer, "Deployments")
        assert viewer.get_by_text("need the operator role").count() == 1
        assert viewer.get_by_role("button", name="Apply").count() == 0
        assert viewer.get_by_role("button", name="Promote").count() == 0
        viewer.screenshot(path=str(ARTIFACTS / "console-signed-in-viewer.png"), full_page=True)
        open_page(viewer, "Endpoints")
        assert viewer.get_by_role("button", name="Create").count() == 0

        operator = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        sign_in(operator, PEOPLE["olga"][0])
        open_page(operator, "Deployments")
        canary_in_browser(operator, tags["cnn"], "olga: 10 % to the CNN")
        operator.screenshot(path=str(ARTIFACTS / "console-signed-in-operator.png"), full_page=True)
        browser.close()
    audit = httpx.get(f"{single_worker.url}/v1/admin/audit", params={"endpoint": "digits", "limit": 1},
                      headers=AUTH).json()
    assert audit[0]["actor"] == "olga" and audit[0]["reason"] == "olga: 10 % to the CNN"
