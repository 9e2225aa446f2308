"""`switchyard console --desktop` on a real X display (Xvfb): the console in a window of its own, gone with
its Streamlit process when the window closes; and the fallback to the default browser with no display."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageStat

from tests.conftest import artifacts_dir
from tests.integration.conftest import TOKEN
from tests.integration.test_cli import SWITCHYARD
from tests.servers import Served

pytestmark = pytest.mark.integration
ARTIFACTS = artifacts_dir("desktop")
WIDTH, HEIGHT = 1400, 950


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found (Debian packages xvfb, xdotool, imagemagick)")


@pytest.fixture
def display() -> Iterator[str]:
    need("Xvfb", "xdotool", "import")
    # Xvfb picks a free display itself and writes its number to a pipe: no race with another X server.
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{WIDTH}x{HEIGHT}x24",
                             "-nolisten", "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            pass_fds=(write,))
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # empty if Xvfb died first
    assert number and xvfb.poll() is None, "Xvfb did not start"
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(10)


def console(url: str, env: dict[str, str], *args: str,
            sigint: signal.Handlers = signal.SIG_DFL) -> subprocess.Popen[str]:
    """The console as a terminal would start it, with the SIGINT disposition it inherits stated rather than
    taken from whatever ran the suite (a background job's children start with SIGINT ignored)."""
    return subprocess.Popen([SWITCHYARD, "console", "--desktop", "--url", url, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def xdotool(display: str, *args: str) -> str:
    out = subprocess.run(["xdotool", *args], env={**os.environ, "DISPLAY": display}, capture_output=True, text=True,
                         timeout=30)
    return out.stdout.strip()


def wait_for_window(display: str, title: str, timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if found := xdotool(display, "search", "--name", title):
            return found.splitlines()[-1]
        time.sleep(0.5)
    raise AssertionError(f"no window named {title!r} on {display}")


def screenshot(display: str, path: Path) -> Image.Image:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["import", "-display", display, "-window", "root", str(path)], check=True, timeout=60)
    return Image.open(path).convert("RGB")


def console_url(output: str) -> str:
    return output.split("console at ", 1)[1].split(",", 1)[0]


def test_the_console_opens_in_its_own_window_and_stops_when_it_closes(server: Served, display: str) -> None:
    env = {**os.environ, "DISPLAY": display, "SWITCHYARD_TOKEN": TOKEN}
    proc = console(server.url, env)
    try:
        window = wait_for_window(display, "Switchyard console")
        time.sleep(6)  # the Overview page draws its charts after the title is set
        shot = screenshot(display, ARTIFACTS / "console-window.png")
        assert shot.size == (WIDTH, HEIGHT)
        left, top, right, bottom = 0, 0, 1280, 860  # the window (--window-size) at the display's corner
        inside, outside = shot.crop((left, top, right, bottom)), shot.crop((right + 10, 0, WIDTH, HEIGHT))
        assert max(ImageStat.Stat(inside).stddev) > 20, "the window is blank"
        assert max(ImageStat.Stat(outside).stddev) < 1, "something is drawn outside the window"
        xdotool(display, "windowfocus", "--sync", window)
        xdotool(display, "key", "ctrl+w")  # what a person does to close an app window
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "in a chromium --app window" in out and "console stopped" in out
    assert "neither GTK (PyGObject) nor Qt" in out  # pywebview is installed here, without a toolkit
    with pytest.raises(httpx.HTTPError):  # the Streamlit process went with the window
        httpx.get(f"{console_url(out)}/_stcore/health", timeout=2)


@pytest.mark.parametrize("sigint, stop", [
    (signal.SIG_DFL, signal.SIGINT),  # Ctrl-C in the terminal that ran it
    (signal.SIG_IGN, signal.SIGINT),  # the same, started from a background job (`make test &`, nohup, CI)
    (signal.SIG_IGN, signal.SIGTERM),  # a supervisor stopping it
], ids=["ctrl-c", "ctrl-c-inherited-ignore", "sigterm-inherited-ignore"])
def test_without_a_display_it_falls_back_to_the_default_browser(server: Served, tmp_path: Path,
                                                               sigint: signal.Handlers, stop: int) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update({"BROWSER": str(browser), "SWITCHYARD_TOKEN": TOKEN})
    proc = console(server.url, env, sigint=sigint)
    try:
        end = time.monotonic() + 90
        while not opened.exists():
            assert time.monotonic() < end and proc.poll() is None, "no browser was opened"
            time.sleep(0.2)
        url = opened.read_text().strip()
        assert httpx.get(f"{url}/_stcore/health", timeout=5).status_code == 200
        time.sleep(1)  # past the echo: the console is waiting, as it would be when someone stops it
        started = time.monotonic()
        os.killpg(proc.pid, stop) if stop == signal.SIGINT else proc.send_signal(stop)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"console stopped {took:.2f} s after {signal.Signals(stop).name}")
    assert took < 5, f"the console took {took:.1f} s to stop"
    assert "in the default browser" in out and "console stopped" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/_stcore/health", timeout=2)


def test_asking_for_an_app_window_with_no_browser_says_what_it_looked_for(server: Served, display: str) -> None:
    env = {**os.environ, "DISPLAY": display, "SWITCHYARD_DESKTOP_BROWSER": "no-such-browser"}
    out = subprocess.run([SWITCHYARD, "console", "--desktop", "--window", "app", "--url", server.url], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--window app: no Chromium-family browser" in out.stderr


def test_the_launcher_installs_with_one_command_and_validates(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    out = subprocess.run([SWITCHYARD, "console", "--install-launcher"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    entry = tmp_path / "applications" / "switchyard-console.desktop"
    assert (tmp_path / "icons" / "hicolor" / "scalable" / "apps" / "switchyard.svg").exists()
    assert f"Exec={SWITCHYARD} console --desktop" in entry.read_text()
    need("desktop-file-validate")
    check = subprocess.run(["desktop-file-validate", str(entry)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "error" not in check.stdout.lower(), check.stdout
