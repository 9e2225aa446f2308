"""What every command shares: connection and output options, the admin client, exit codes, confirmation."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from admin.cli.connection import Connection, resolve
from admin.client import AdminClient, ConsoleError
from admin.settings import ConsoleSettings

F = TypeVar("F", bound=Callable[..., Any])
# Exit codes: 0 ok, 1 refused by the server, 2 usage error (click's own), 3 cannot connect.
REFUSED, UNREACHABLE = 1, 3
OPTIONS = ("url", "token", "profile", "output")


class Refused(click.ClickException):
    exit_code = REFUSED


class Unreachable(click.ClickException):
    exit_code = UNREACHABLE


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Connection and output options are accepted before or after the command name; the last one given wins."""
    if value is not None:
        ctx.find_root().meta[f"switchyard.{param.name}"] = value
    return value


def common(fn: F) -> F:
    """--url, --token, --profile and -o on every command (and on the group), as kubectl takes them anywhere."""
    options = [
        click.option("--url", expose_value=False, callback=_remember, is_eager=True,
                     help="The service, e.g. http://127.0.0.1:3000 (env SWITCHYARD_URL)."),
        click.option("--token", expose_value=False, callback=_remember, is_eager=True,
                     help="Admin token (env SWITCHYARD_TOKEN); never printed."),
        click.option("--profile", expose_value=False, callback=_remember, is_eager=True,
                     help="A profile in ~/.config/switchyard/config.toml (env SWITCHYARD_PROFILE)."),
        click.option("-o", "--output", type=click.Choice(["table", "json"]), expose_value=False, callback=_remember,
                     is_eager=True, help="table for people (default), json for scripts: the API's own JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def meta(ctx: click.Context, name: str) -> Any:
    return ctx.find_root().meta.get(f"switchyard.{name}")


def connection(ctx: click.Context) -> Connection:
    if "switchyard.connection" not in ctx.find_root().meta:
        ctx.find_root().meta["switchyard.connection"] = resolve(meta(ctx, "url"), meta(ctx, "token"),
                                                                meta(ctx, "profile"))
    conn: Connection = ctx.find_root().meta["switchyard.connection"]
    return conn


def client(ctx: click.Context) -> AdminClient:
    conn = connection(ctx)
    settings = ConsoleSettings(service_url=conn.url, admin_token=conn.token, timeout_s=30)
    return AdminClient(settings, url_hint="--url or SWITCHYARD_URL", token_hint="--token or SWITCHYARD_TOKEN")


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call; a refusal exits 1 with the server's words, no connection exits 3."""
    try:
        return fn(*args, **kwargs)
    except ConsoleError as exc:
        if exc.status is None:
            raise Unreachable(str(exc)) from None
        raise Refused(str(exc)) from None


def json_output(ctx: click.Context) -> bool:
    return bool(meta(ctx, "output") == "json")


def emit(ctx: click.Context, data: Any, render: Callable[[Console], None]) -> None:
    """Print `data` as JSON for scripts, or let `render` draw it for people."""
    if json_output(ctx):
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(stdout())


def stdout() -> Console:
    # Wide enough for full tags when piped (tmux panes and CI logs are not terminals of known width).
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def table(*columns: str, title: str | None = None) -> Table:
    t = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for name in columns:
        t.add_column(name, justify="right" if name in NUMERIC else "left", overflow="fold")
    return t


NUMERIC = {"weight", "req/s", "requests", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "revision", "step",
           "fallbacks", "size MB", "accuracy", "queue"}


def confirm(ctx: click.Context, yes: bool, what: str) -> None:
    """Ask before a change; a script must say --yes, since there is no one to ask."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"stdin is not a terminal, so no one can confirm {what!r}: pass --yes")
    click.confirm(f"{what} on {connection(ctx).url}?", abort=True)


def yes_option(fn: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Do not ask; needed when stdin is not a terminal.")(fn)


def reason_option(fn: F) -> F:
    return click.option("--reason", required=True, help="Why; it goes into the audit log.")(fn)


def change(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command that changes something: connection options, a --reason for the audit log, and --yes."""
    return common(reason_option(yes_option(click.pass_context(fn))))


def number(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
