"""Endpoints and deployments: list, create, delete; deploy a split, promote, roll back, history."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from admin.cli.base import call, change, client, common, confirm, emit, reason_option, table, yes_option
from admin.cli.observe import when


def _revision(out: Console, record: dict[str, Any]) -> None:
    versions = ", ".join(f"{v['tag']} {v['role']} {v['weight']}%" for v in record["versions"])
    out.print(f"{record['endpoint']} is at revision {record['revision']}: {versions}")


@click.group()
def endpoints() -> None:
    """Endpoints: what the service serves, each one a task type and a model."""


@endpoints.command("list")
@common
@click.pass_context
def endpoints_list(ctx: click.Context) -> None:
    """Every endpoint, its task, route, revision and versions."""
    items = call(client(ctx).endpoints)

    def render(out: Console) -> None:
        t = table("endpoint", "task", "route", "revision", "source", "versions")
        for e in items:
            versions = ", ".join(f"{v['tag']} {v['weight']}%" for v in e["versions"]) or "-"
            t.add_row(e["name"], e["task"], e["route"], str(e["revision"]), e["source"], versions)
        out.print(t)

    emit(ctx, items, render)


@endpoints.command("create")
@common
@click.argument("name")
@click.option("--task", required=True, help="Task type: image-classification, text-classification, "
                                            "text-embedding, tensor or a plug-in's.")
@click.option("--model", help="A model name or full tag in the store; its best validated version is deployed.")
@click.option("--description", default="", help="Shown in the console and the playground.")
@reason_option
@yes_option
@click.pass_context
def endpoints_create(ctx: click.Context, name: str, task: str, model: str | None, description: str, reason: str,
                     yes: bool) -> None:
    """Serve a new endpoint on every worker and replica, without a restart."""
    config = {"name": name, "task": task, "description": description, **({"model": model} if model else {})}
    confirm(ctx, yes, f"create endpoint {name} ({task})")
    created = call(client(ctx).create_endpoint, config, reason)
    emit(ctx, created, lambda out: out.print(f"{name} serves {created['route']}"))


@endpoints.command("delete")
@click.argument("name")
@change
def endpoints_delete(ctx: click.Context, name: str, reason: str, yes: bool) -> None:
    """Stop serving an endpoint created through the API (declared ones live in switchyard.yaml)."""
    confirm(ctx, yes, f"delete endpoint {name}")
    gone = call(client(ctx).delete_endpoint, name, reason)
    emit(ctx, gone, lambda out: out.print(f"{name} deleted"))


def split(stable: str, canary: str | None, weight: int | None, shadows: tuple[str, ...]) -> list[dict[str, Any]]:
    """The versions of a deployment from the flags: stable gets what the canary does not."""
    if weight is not None and canary is None:
        raise click.UsageError("--weight is the canary's share: give --canary too")
    share = 10 if canary and weight is None else (weight or 0)
    versions = [{"tag": stable, "role": "stable", "weight": 100 - share}]
    if canary:
        versions.append({"tag": canary, "role": "canary", "weight": share})
    versions += [{"tag": tag, "role": "shadow", "weight": 0} for tag in shadows]
    return versions


@click.command()
@common
@click.argument("endpoint")
@click.option("--stable", required=True, help="The version most traffic goes to (a tag or model name).")
@click.option("--canary", help="A version to try on part of the traffic.")
@click.option("--weight", type=click.IntRange(1, 99), help="The canary's share in % (default 10).")
@click.option("--shadow", multiple=True, help="A version that gets a copy of the traffic and never answers "
                                              "(repeatable).")
@click.option("--shadow-sample", type=click.FloatRange(0, 100), default=100, show_default=True,
              help="% of requests copied to the shadows, on spare capacity only.")
@click.option("--sticky", is_flag=True, help="Keep each client (X-Routing-Key) on one version.")
@reason_option
@yes_option
@click.pass_context
def deploy(ctx: click.Context, endpoint: str, stable: str, canary: str | None, weight: int | None,
           shadow: tuple[str, ...], shadow_sample: float, sticky: bool, reason: str, yes: bool) -> None:
    """Set an endpoint's split: every version is loaded and checked before any traffic moves."""
    versions = split(stable, canary, weight, shadow)
    shares = ", ".join(f"{v['tag']} {v['weight']}%" for v in versions)
    confirm(ctx, yes, f"deploy {shares} to {endpoint}")
    record = call(client(ctx).deploy, endpoint, versions, sticky, reason, shadow_sample)
    emit(ctx, record, lambda out: _revision(out, record))


@click.command()
@click.argument("endpoint")
@change
def promote(ctx: click.Context, endpoint: str, reason: str, yes: bool) -> None:
    """Give the endpoint's one canary all the traffic (shadows stay)."""
    confirm(ctx, yes, f"promote the canary of {endpoint}")
    record = call(client(ctx).promote, endpoint, reason)
    emit(ctx, record, lambda out: _revision(out, record))


@click.command()
@common
@click.argument("endpoint")
@click.option("--revision", type=int, help="The revision to go back to (default: the one before the current).")
@reason_option
@yes_option
@click.pass_context
def rollback(ctx: click.Context, endpoint: str, revision: int | None, reason: str, yes: bool) -> None:
    """Go back to an earlier revision's split, as a new revision."""
    confirm(ctx, yes, f"roll {endpoint} back to revision {revision if revision is not None else 'before the current'}")
    record = call(client(ctx).rollback, endpoint, revision, reason)
    emit(ctx, record, lambda out: _revision(out, record))


@click.command()
@common
@click.argument("endpoint")
@click.pass_context
def history(ctx: click.Context, endpoint: str) -> None:
    """The endpoint's revisions, newest first: who set which split, and why."""
    revisions = call(client(ctx).deployment, endpoint)["revisions"]

    def render(out: Console) -> None:
        t = table("revision", "when", "actor", "action", "versions", "reason")
        for r in revisions:
            versions = ", ".join(f"{v['tag']} {v['role']} {v['weight']}%" for v in r["spec"]["versions"])
            t.add_row(str(r["revision"]), when(r["created_at"]), r["actor"], r["action"], versions, r["reason"] or "")
        out.print(t)

    emit(ctx, revisions, render)
