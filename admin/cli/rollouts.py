"""Automated canary rollouts: start, status, pause, resume, abort, and watch (exits 0 promoted, 1 rolled back)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from admin.cli.base import (
    REFUSED,
    call,
    change,
    client,
    common,
    confirm,
    emit,
    json_output,
    reason_option,
    stdout,
    table,
    yes_option,
)

DONE = {"promoted": 0, "rolled_back": REFUSED, "aborted": REFUSED}


def steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of percentages like 5,25,50,100",
                                 param_hint="--steps") from None


def describe(state: dict[str, Any]) -> Group:
    """The rollout for people: step, progress toward the step's minimums, and the latest evidence."""
    policy, latest = state["policy"], state.get("latest") or {}
    head = (f"[bold]{state['endpoint']}[/bold]: {state['canary']} over {state['stable']}  "
            f"[bold]{state['status']}[/bold] at {state['percent']} % (step {state['step'] + 1} of "
            f"{len(policy['steps'])}: {', '.join(map(str, policy['steps']))})")
    parts: list[Any] = [head]
    progress = latest.get("step_progress")
    if progress and state["status"] in ("running", "paused"):
        for label, have, need in (("requests", progress["requests"], progress["min_requests"]),
                                  ("seconds", progress["seconds"], progress["min_seconds"])):
            bar = Table.grid(padding=(0, 1))
            bar.add_row(f"{label:>8}", ProgressBar(total=max(need, 1e-9), completed=min(have, need), width=30),
                        f"{have:g} / {need:g}")
            parts.append(bar)
    if latest:
        t = table("check", "canary", "stable", "statistic", "verdict", title=f"look {latest.get('look')}")
        for name, check in (latest.get("checks") or {}).items():
            t.add_row(name, _side(latest["canary"], name), _side(latest["stable"], name),
                      _statistic(check), "[red]reject[/red]" if check.get("reject") else "ok")
        parts.append(t)
    decisions = [d for d in state.get("decisions", []) if d["action"] != "start"]
    if decisions:
        last = decisions[-1]
        parts.append(f"last decision: {last['action']}: {last['reason']}")
    return Group(*parts)


def _side(summary: dict[str, Any], check: str) -> str:
    if check == "errors":
        return f"{summary['errors']}/{summary['requests']} errors"
    quantile = next((k for k in summary if k.endswith("_ms")), None)
    value = summary.get(quantile) if quantile else None
    return f"{value:.2f} ms {quantile.removesuffix('_ms')}" if quantile and value is not None else "-"


def _statistic(check: dict[str, Any]) -> str:
    shown = {k: v for k, v in check.items() if k in ("effect", "threshold", "p_value", "alpha", "note")}
    sequential = check.get("sequential") or {}
    if "likelihood_ratio" in sequential:  # the anytime-valid test beside O'Brien-Fleming
        shown["mSPRT LR"] = sequential["likelihood_ratio"]
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()) or "-"


@click.group()
def rollout() -> None:
    """Canary rollouts that advance, promote or roll back on statistical evidence."""


@rollout.command("start")
@common
@click.argument("endpoint")
@click.argument("tag")
@click.option("--steps", "step_list", default="5,25,50,100", show_default=True, callback=lambda c, p, v: steps(v),
              help="Canary traffic per step in %, ending at 100; a first 0 runs it as a shadow.")
@click.option("--min-requests", type=click.IntRange(1), help="Canary requests before a step may advance.")
@click.option("--min-seconds", type=click.FloatRange(0), help="Seconds before a step may advance.")
@click.option("--interval", type=click.FloatRange(0.2), help="Seconds between analyses.")
@click.option("--latency-ratio", type=click.FloatRange(1, 100), help="How many times stable's p95 the canary's "
                                                                     "may reach.")
@click.option("--checks", help="Comma-separated: errors, latency, agreement, drift.")
@reason_option
@yes_option
@click.pass_context
def rollout_start(ctx: click.Context, endpoint: str, tag: str, step_list: list[int], min_requests: int | None,
                  min_seconds: float | None, interval: float | None, latency_ratio: float | None,
                  checks: str | None, reason: str, yes: bool) -> None:
    """Start rolling TAG out on ENDPOINT against its current stable version."""
    policy: dict[str, Any] = {"steps": step_list}
    for key, value in (("min_requests", min_requests), ("min_seconds", min_seconds), ("interval_s", interval),
                       ("latency_ratio", latency_ratio)):
        if value is not None:
            policy[key] = value
    if checks:
        policy["checks"] = [c.strip() for c in checks.split(",") if c.strip()]
    confirm(ctx, yes, f"start a rollout of {tag} on {endpoint}")
    state = call(client(ctx).start_rollout, endpoint, tag, policy, reason)
    emit(ctx, state, lambda out: out.print(describe(state)))


@rollout.command("status")
@common
@click.argument("endpoint")
@click.pass_context
def rollout_status(ctx: click.Context, endpoint: str) -> None:
    """The endpoint's latest rollout: step, progress and evidence."""
    state = call(client(ctx).rollout, endpoint)
    if state is None:
        raise click.ClickException(f"no rollout on {endpoint} yet: `switchyard rollout start {endpoint} TAG` "
                                   "starts one")
    emit(ctx, state, lambda out: out.print(describe(state)))


def _action(name: str, verb: str) -> click.Command:
    @click.argument("endpoint")
    @change
    def act(ctx: click.Context, endpoint: str, reason: str, yes: bool) -> None:
        confirm(ctx, yes, f"{name} the rollout on {endpoint}")
        state = call(client(ctx).rollout_action, endpoint, name, reason)
        emit(ctx, state, lambda out: out.print(describe(state)))

    act.__doc__ = f"{verb.capitalize()} the endpoint's running rollout."
    return click.command(name)(act)


for _name, _verb in (("pause", "pause"), ("resume", "resume"), ("abort", "abort, and send all traffic back to "
                                                                          "stable in")):
    rollout.add_command(_action(_name, _verb))


@rollout.command("watch")
@common
@click.argument("endpoint")
@click.option("--every", default=1.0, show_default=True, type=click.FloatRange(0.2, 60), help="Seconds between looks.")
@click.option("--timeout", type=click.FloatRange(1), help="Give up (exit 1) after this many seconds.")
@click.pass_context
def rollout_watch(ctx: click.Context, endpoint: str, every: float, timeout: float | None) -> None:
    """Follow a rollout live until it ends: exit 0 when promoted, 1 when rolled back or aborted."""
    api, deadline = client(ctx), time.monotonic() + timeout if timeout else float("inf")
    state = call(api.rollout, endpoint)
    if state is None:
        raise click.ClickException(f"no rollout on {endpoint} to watch")
    if json_output(ctx) or not sys.stdout.isatty():
        state = _follow_lines(ctx, api, endpoint, state, every, deadline)
    else:
        with Live(describe(state), console=stdout(), refresh_per_second=4) as live:
            while state["status"] not in DONE and time.monotonic() < deadline:
                time.sleep(every)
                state = call(api.rollout, endpoint)
                live.update(describe(state))
    _finish(state)


def _follow_lines(ctx: click.Context, api: Any, endpoint: str, state: dict[str, Any], every: float,
                  deadline: float) -> dict[str, Any]:
    """For logs and scripts: one line (or JSON object) each time something changes."""
    seen = None
    while True:
        line = _line(state)
        if line != seen:
            click.echo(_json_line(state) if json_output(ctx) else line)
            seen = line
        if state["status"] in DONE or time.monotonic() >= deadline:
            return state
        time.sleep(every)
        state = call(api.rollout, endpoint)


def _line(state: dict[str, Any]) -> str:
    progress = (state.get("latest") or {}).get("step_progress") or {}
    done = (f" {progress['requests']}/{progress['min_requests']} requests, "
            f"{progress['seconds']:.0f}/{progress['min_seconds']:.0f} s" if progress and state["status"] == "running"
            else "")
    return f"{state['status']} {state['percent']} % {state['canary']}{done}"


def _json_line(state: dict[str, Any]) -> str:
    import json

    return json.dumps(state, separators=(",", ":"), default=str)


def _finish(state: dict[str, Any]) -> None:
    if state["status"] not in DONE:
        click.echo(f"still {state['status']} at {state['percent']} %: gave up waiting", err=True)
        sys.exit(REFUSED)
    decisions = [d for d in state.get("decisions", []) if d["action"] in ("promote", "rollback")]
    why = f": {decisions[-1]['reason']}" if decisions else ""
    click.echo(f"{state['endpoint']}: {state['canary']} {state['status'].replace('_', ' ')}{why}",
               err=state["status"] != "promoted")
    sys.exit(DONE[state["status"]])
