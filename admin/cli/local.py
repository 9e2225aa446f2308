"""Commands that run things on this machine: the stack, the console, model builds, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys

import click
from click.shell_completion import get_completion_class

from admin.cli.base import common, connection
from admin.cli.desktop import ROOT, install_desktop_launcher, run_desktop, start_console, stop_console, stoppable
from admin.cli.observe import models_list


@click.group()
def models() -> None:
    """Model versions: list what the service has; import and verify with the build pipeline."""


models.add_command(models_list)

PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _build_side(command: str, args: list[str]) -> None:
    # The build pipeline (torch, transformers) runs in its own process: the CLI stays an HTTP client.
    env = dict(os.environ)
    local_store = ROOT / ".state" / "bentoml"
    if "BENTOML_HOME" not in env and local_store.is_dir():  # the store `make serve` serves from
        env["BENTOML_HOME"] = str(local_store)
    sys.exit(subprocess.run([sys.executable, "-m", "models", command, *args], cwd=ROOT, env=env).returncode)


@models.command("import", context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def models_import(args: tuple[str, ...]) -> None:
    """Bring your own model into the store: the same as `python -m models import` (see its --help)."""
    _build_side("import", list(args))


@models.command("verify", context_settings=PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def models_verify(args: tuple[str, ...]) -> None:
    """Check a stored version's hashes and gate again: the same as `python -m models verify`."""
    _build_side("verify", list(args))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """The stack, as `make serve` runs it: sets up what is missing, then the service and the console."""
    if not (ROOT / "Makefile").exists():
        raise click.ClickException(f"switchyard serve runs from a clone of the repository; no Makefile in {ROOT}")
    os.execvp("make", ["make", "-C", str(ROOT), "serve", f"HOST={host}", f"PORT={port}"])


@click.command()
@common
@click.option("--desktop", is_flag=True, help="In a window of its own instead of a browser tab.")
@click.option("--window", type=click.Choice(["auto", "webview", "app", "browser"]), default="auto",
              show_default=True, help="With --desktop: pywebview, a Chromium --app window, or the default browser.")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535),
              help="Without --desktop: the port to serve the console on.")
@click.option("--install-launcher", is_flag=True,
              help="Add 'Switchyard console' with its icon to your desktop's application menu, then exit.")
@click.pass_context
def console(ctx: click.Context, desktop: bool, window: str, port: int, install_launcher: bool) -> None:
    """The admin console for the service --url names (so a laptop can run it for a remote cluster)."""
    if install_launcher:
        for path in install_desktop_launcher():
            click.echo(f"wrote {path}")
        return
    conn = connection(ctx)
    if desktop:
        run_desktop(conn, window)
        return
    click.echo(f"console at http://127.0.0.1:{port} for {conn.url}; Ctrl-C stops it")
    with stoppable():
        process = start_console(conn, port)
        try:
            process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_console(process)


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(switchyard completion bash)" in ~/.bashrc."""
    from admin.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "switchyard", "_SWITCHYARD_COMPLETE").source())
