"""Read-only commands: status, metrics, audit and the models in the store."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console

from admin.cli.base import call, client, common, connection, emit, number, table
from admin.client import quality

SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    """'90s', '15m', '1h', '2d' -> seconds; a usage error naming the flag otherwise."""
    match = SINCE.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 1h or 2d", param_hint="--since")
    return float(match.group(1)) * UNITS[match.group(2)]


def _rate(stats: dict[str, Any], window: float) -> str:
    return number(stats["requests"] / window) if stats else "-"


@click.command()
@common
@click.option("--window", default=60, show_default=True, type=click.IntRange(5, 86_400),
              help="Seconds of traffic behind req/s, p95 and errors.")
@click.pass_context
def status(ctx: click.Context, window: int) -> None:
    """Readiness, each endpoint's split and rollout, and the last minute's req/s, p95 and errors."""
    api = client(ctx)
    health = call(api.health)
    stats = call(api.stats, window)["endpoints"]
    rollouts = {name: call(api.rollout, name) for name in health.get("endpoints", {})}
    data = {"health": health, "stats": {"window_s": window, "endpoints": stats}, "rollouts": rollouts}

    def render(out: Console) -> None:
        store = health["control_plane"]
        out.print(f"[bold]{connection(ctx).url}[/bold]  {'ready' if health['ready'] else '[red]not ready[/red]'}"
                  f"  control plane {'ok' if store['ok'] else '[red]' + str(store['error']) + '[/red]'}"
                  f"  {_grpc(health.get('grpc'))}  {memory_line(health.get('memory'))}")
        t = table("endpoint", "version", "role", "weight", "loaded", "MiB", "req/s", "p95 ms", "errors", "rollout")
        for name, endpoint in sorted(health["endpoints"].items()):
            rollout = rollouts.get(name)
            active = f"{rollout['status']} {rollout['percent']} % {rollout['canary']}" if rollout and \
                rollout["status"] in ("running", "paused") else "-"
            for i, v in enumerate(endpoint["versions"] or [{"tag": "(no deployment)", "role": "", "weight": None}]):
                s = stats.get(name, {}).get(v["tag"], {})
                label = f"{name} ({endpoint.get('residency', 'always')})" if i == 0 else ""
                t.add_row(label, v["tag"], v["role"], str(v["weight"] if v["weight"] is not None else "-"),
                          v.get("state", "-"), mib(v.get("resident_bytes")),
                          _rate(s, window), number(s.get("latency_ms", {}).get("p95")),
                          str(s.get("errors", "-")), active if i == 0 else "")
        out.print(t)

    emit(ctx, data, render)


def mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / (1 << 20):.1f}"


def memory_line(memory: dict[str, Any] | None) -> str:
    """The answering worker's model memory against its budget (SWITCHYARD_MODEL_MEMORY)."""
    if not memory:
        return ""
    budget = memory.get("budget_bytes")
    held = f"models: {memory['resident']} loaded, {mib(memory['used_bytes'])} MiB"
    return f"{held} of {mib(budget)} MiB" if budget else f"{held}, no budget"


def _grpc(listener: dict[str, Any] | None) -> str:
    """gRPC as the worker that answered reports it."""
    if not listener or listener.get("port") is None:
        return "gRPC off"
    return f"gRPC :{listener['port']} {'up' if listener.get('up') else '[red]down[/red]'}"


@click.command()
@common
@click.argument("endpoint")
@click.option("--window", default=60, show_default=True, type=click.IntRange(5, 86_400),
              help="Seconds of traffic to summarise.")
@click.pass_context
def metrics(ctx: click.Context, endpoint: str, window: int) -> None:
    """Per-version requests, req/s, errors, fallbacks and latency quantiles, from every worker."""
    api = client(ctx)
    call(api.deployment, endpoint)  # an unknown endpoint is refused by name, not shown as empty
    versions = call(api.stats, window)["endpoints"].get(endpoint, {})

    def render(out: Console) -> None:
        t = table("version", "requests", "req/s", "errors", "error %", "fallbacks", "p50 ms", "p95 ms", "p99 ms",
                  title=f"{endpoint}, last {window} s")
        for tag, s in sorted(versions.items()):
            q = s["latency_ms"]
            t.add_row(tag, str(s["requests"]), _rate(s, window), str(s["errors"]), number(100 * s["error_rate"], 2),
                      str(s["fallbacks"]), number(q["p50"]), number(q["p95"]), number(q["p99"]))
        out.print(t if versions else f"no requests on {endpoint} in the last {window} s")

    emit(ctx, {"endpoint": endpoint, "window_s": window, "versions": versions}, render)


@click.command()
@common
@click.option("--endpoint", help="Only this endpoint's entries.")
@click.option("--since", help="Only entries this recent: 30s, 15m, 1h, 2d.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
def audit(ctx: click.Context, endpoint: str | None, since: str | None, limit: int) -> None:
    """Who changed what, when and why (newest first)."""
    horizon = time.time() - seconds(since) if since else 0.0
    entries = [e for e in call(client(ctx).audit, endpoint, limit) if float(e["ts"]) >= horizon]

    def render(out: Console) -> None:
        t = table("when", "actor", "action", "endpoint", "reason")
        for e in entries:
            t.add_row(when(e["ts"]), e["actor"], e["action"], e["endpoint"] or "", e["reason"] or "")
        out.print(t if entries else "no audit entries")

    emit(ctx, entries, render)


def when(ts: float) -> str:
    return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")


@click.command("list")
@common
@click.option("--task", help="Only versions of this task type, e.g. image-classification.")
@click.pass_context
def models_list(ctx: click.Context, task: str | None) -> None:
    """Versions in the service's model store, with their task, gate metric and latency."""
    models = call(client(ctx).models, task)

    def render(out: Console) -> None:
        t = table("tag", "task", "variant", "quality", "gate", "p50 ms", "size MB")
        for m in models:
            metric = m.get("metrics") or {}
            p50 = ((metric.get("benchmark") or {}).get("latency_ms") or {}).get("p50")
            t.add_row(m["tag"], str(m.get("task") or "-"), str(m["labels"].get("variant") or "-"), quality(m),
                      "passed" if metric.get("validation_passed") else "failed", number(p50, 3),
                      number((m.get("size_bytes") or 0) / 1e6, 2))
        out.print(t if models else "no models")

    emit(ctx, models, render)
