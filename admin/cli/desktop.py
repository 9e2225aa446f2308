"""The console in a window of its own: pywebview where a GUI toolkit is present, else a Chromium-family
browser in --app mode (a window without browser chrome), else the default browser. The Streamlit
process lives as long as the window does."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import httpx

from admin.cli.connection import Connection

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FAMILY = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "microsoft-edge",
                   "brave-browser")
TITLE = "Switchyard console"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_console(conn: Connection, port: int, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """Streamlit on host:port, talking to the service `conn` names with its token (never on the command line)."""
    env = {**os.environ, "SWITCHYARD_SERVICE_URL": conn.url, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    if conn.token:
        env["SWITCHYARD_ADMIN_TOKEN"] = conn.token
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "admin" / "app.py"), "--server.headless", "true",
               "--server.address", host, "--server.port", str(port), "--client.toolbarMode", "minimal"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """Ctrl-C (SIGINT) and a supervisor's SIGTERM both raise KeyboardInterrupt here, whatever dispositions
    this process inherited: a job a non-interactive shell puts in the background starts with SIGINT ignored,
    and Python then never installs its own handler, so Ctrl-C would do nothing."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_console(process: subprocess.Popen[bytes]) -> None:
    """Streamlit gets SIGTERM and 5 s to go, then SIGKILL; then the console says it stopped."""
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    click.echo("console stopped")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the console stopped while starting (exit {process.returncode})")
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the console did not answer at {url} within {timeout_s:.0f} s")


def gui_present() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def webview_toolkit() -> str | None:
    """'gtk' or 'qt' when pywebview can make a window here, None when it cannot (said once, in words)."""
    import importlib.util

    if importlib.util.find_spec("webview") is None:
        return None
    for toolkit, module in (("gtk", "gi"), ("qt", "qtpy")):
        if importlib.util.find_spec(module) is not None:
            return toolkit
    click.echo("pywebview is installed but finds neither GTK (PyGObject) nor Qt (qtpy) here", err=True)
    return None


def open_webview(url: str) -> bool:
    """A native window through pywebview; False when its GUI toolkit (GTK or Qt) is missing."""
    import webview

    try:
        webview.create_window(TITLE, url, width=1280, height=860)
        webview.start()  # returns when the window closes
    except Exception as exc:  # no GTK or Qt bindings: pywebview cannot make a window here
        click.echo(f"pywebview could not open a window ({type(exc).__name__}: {exc}); falling back", err=True)
        return False
    return True


def chromium() -> str | None:
    override = os.environ.get("SWITCHYARD_DESKTOP_BROWSER")
    if override:
        return shutil.which(override)
    return next((path for name in CHROMIUM_FAMILY if (path := shutil.which(name))), None)


def open_app_window(browser: str, url: str) -> int:
    """A Chromium-family --app window with its own profile, so closing the window ends the process."""
    with tempfile.TemporaryDirectory(prefix="switchyard-console-") as profile:
        args = [browser, f"--app={url}", f"--user-data-dir={profile}", "--window-size=1280,860",
                "--no-first-run", "--no-default-browser-check", "--disable-features=Translate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Chromium refuses to start as root with its sandbox; --test-type drops the warning bar about it.
            args += ["--no-sandbox", "--test-type"]
        return subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def open_default_browser(url: str) -> None:
    webbrowser.open(url)
    click.echo("press Ctrl-C to stop the console")
    while True:
        time.sleep(3600)


def open_window(url: str, window: str) -> None:
    """Open the console in the first way that works here, and say which."""
    say: Callable[[str], None] = lambda how: click.echo(f"console at {url}, in {how}")  # noqa: E731
    if window in ("auto", "webview") and gui_present() and (toolkit := webview_toolkit()):
        say(f"a pywebview window ({toolkit})")
        if open_webview(url):
            return
    if window == "webview":
        raise click.ClickException("--window webview: needs a display, pywebview and GTK or Qt "
                                   "(pip install 'switchyard[desktop]')")
    browser = chromium() if window in ("auto", "app") and gui_present() else None
    if browser:
        say(f"a {Path(browser).name} --app window")
        open_app_window(browser, url)
        return
    if window == "app":
        raise click.ClickException("--window app: no Chromium-family browser or display found "
                                   f"(looked for {', '.join(CHROMIUM_FAMILY)})")
    say("the default browser")
    open_default_browser(url)


def run_desktop(conn: Connection, window: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with stoppable():
        process = start_console(conn, port)
        try:
            wait_ready(url, process)
            open_window(url, window)
        except KeyboardInterrupt:
            pass
        finally:
            stop_console(process)


def install_desktop_launcher() -> list[Path]:
    """The .desktop entry and its icon under XDG_DATA_HOME (~/.local/share), where menus look for them.
    The entry runs this very `switchyard`, so it works from a virtual environment too."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    assets = Path(__file__).resolve().parent.parent / "assets"
    beside = Path(sys.executable).parent / "switchyard"  # the script installed with this Python
    program = str(beside) if beside.exists() else shutil.which("switchyard") or "switchyard"
    entry = data / "applications" / "switchyard-console.desktop"
    icon = data / "icons" / "hicolor" / "scalable" / "apps" / "switchyard.svg"
    for path in (entry, icon):
        path.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text((assets / "switchyard-console.desktop").read_text().replace("@SWITCHYARD@", program))
    shutil.copyfile(assets / "switchyard.svg", icon)
    return [entry, icon]
