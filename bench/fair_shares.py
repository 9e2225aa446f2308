"""Two tenants on one generative version, fair shares on and off: a steady caller beside a flood.

The generation benchmark's model (bench/generation.py) behind a real `bentoml serve`, one endpoint with
4 streams (`limits.max_streams`), prompts prefilled in chunks of 128 tokens (`--prefill-tokens`). Two API keys,
equal weights:

- "steady" sends a five-word prompt for 32 tokens every 0.5 s (open loop: it does not wait for answers);
- "flood" keeps 12 requests going at once, each a 400-token prompt for 64 tokens.

Rows: the steady tenant alone; both with `SWITCHYARD_FAIR_SHARES=true` (the default); both with `false`
(arrival order). Reported per tenant: generated tokens per second; for the steady tenant its time to first
token p50 and p99. Writes bench/results/fair_shares.json and docs/benchmarks-fair-shares.md.

    python bench/fair_shares.py                   # about 3 minutes
    python bench/fair_shares.py --seconds 20
    python bench/fair_shares.py --prefill-tokens 64 --results /tmp/fs64.json --out /tmp/fs64.md
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import BENCH_LM, STATE, begin_report, import_model, model_dir, prompts, quantile  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402
from bench.long_prompts import Times, long_prompt, serve, stream  # noqa: E402
from bench.prefix_cache import make_keys  # noqa: E402

STEADY_EVERY_S, STEADY_TOKENS = 0.5, 32
FLOOD_CALLERS, FLOOD_PROMPT, FLOOD_TOKENS = 12, 400, 64
ROWS = {"steady alone": (True, False), "flood, fair shares on": (True, True),
        "flood, fair shares off": (False, True)}


@dataclass
class Row:
    name: str
    steady_tokens_per_s: float
    flood_tokens_per_s: float
    steady_ttft_p50_ms: float
    steady_ttft_p99_ms: float
    steady_requests: int
    flood_requests: int
    errors: int


async def tenants(url: str, seconds: float, flood: bool, keys: list[str], text: str) -> tuple[list[Times],
                                                                                              list[Times], int]:
    host, port = url.removeprefix("http://").split(":")
    texts, errors = prompts(), 0
    steady: list[Times] = []
    flooded: list[Times] = []
    end = time.perf_counter() + seconds

    async def one(out: list[Times], body: dict[str, Any], key: str) -> None:
        nonlocal errors
        try:
            out.append(await stream(host, int(port), body, key))
        except (OSError, RuntimeError):
            errors += 1

    async def steady_caller() -> None:
        pending, i = [], 0
        while time.perf_counter() < end:  # open loop: one request every STEADY_EVERY_S, answered or not
            i += 1
            body = {"prompt": texts[i % len(texts)], "max_tokens": STEADY_TOKENS, "ignore_eos": True}
            pending.append(asyncio.create_task(one(steady, body, keys[0])))
            await asyncio.sleep(STEADY_EVERY_S)
        await asyncio.gather(*pending)

    async def flood_caller(n: int) -> None:
        i = 0
        while time.perf_counter() < end:
            i += 1
            await one(flooded, {"prompt": f"{n} {i} {text}", "max_tokens": FLOOD_TOKENS, "ignore_eos": True}, keys[1])

    await asyncio.gather(steady_caller(), *(flood_caller(n) for n in range(FLOOD_CALLERS if flood else 0)))
    return steady, flooded, errors


def measure(name: str, url: str, seconds: float, flood: bool, keys: list[str], text: str) -> Row:
    asyncio.run(tenants(url, min(3.0, seconds / 3), flood, keys, text))  # warm-up
    began = time.perf_counter()
    steady, flooded, errors = asyncio.run(tenants(url, seconds, flood, keys, text))
    wall = time.perf_counter() - began
    ttft = [t.ttft_s * 1000 for t in steady]
    row = Row(name, sum(t.tokens for t in steady) / wall, sum(t.tokens for t in flooded) / wall,
              quantile(ttft, 0.5), quantile(ttft, 0.99), len(steady), len(flooded), errors)
    print(f"  {name:24s} steady {row.steady_tokens_per_s:5.0f} tok/s ttft p50 {row.steady_ttft_p50_ms:6.0f} p99 "
          f"{row.steady_ttft_p99_ms:6.0f} ms  flood {row.flood_tokens_per_s:5.0f} tok/s  errors {errors}", flush=True)
    return row


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, rows = data["meta"], [Row(**r) for r in data["rows"]]
    lines = ["# Fair shares: a steady tenant beside a flood", "",
             written_by("fair_shares.py", results, meta), "",
             f"One endpoint, 4 streams, prefill in chunks of {meta.get('prefill_tokens', 128)} tokens "
             "(`SWITCHYARD_PREFILL_TOKENS`). *steady*: a five-word prompt for "
             f"{STEADY_TOKENS} tokens every {STEADY_EVERY_S:g} s. *flood*: {FLOOD_CALLERS} requests at once, "
             f"each a {FLOOD_PROMPT}-token prompt for {FLOOD_TOKENS} tokens. Each tenant its own API key, equal "
             "weights.", "",
             "| row | steady tok/s | flood tok/s | steady TTFT p50 | steady TTFT p99 | steady requests | "
             "flood requests | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.steady_tokens_per_s:.0f} | {r.flood_tokens_per_s:.0f} | "
                     f"{r.steady_ttft_p50_ms:.0f} ms | {r.steady_ttft_p99_ms:.0f} ms | {r.steady_requests} | "
                     f"{r.flood_requests} | {r.errors} |")
    alone = rows[0].steady_ttft_p99_ms
    lines += ["", *[f"- {r.name}: the steady tenant's TTFT p99 is {r.steady_ttft_p99_ms / alone:.1f}x its value "
                    "alone (goal: at most 2x)." for r in rows[1:]], "",
              f"![the steady tenant's time to first token, and each tenant's tokens/s]({out.with_suffix('.png').name})",
              ""]
    out.write_text("\n".join(lines))
    plot(rows, alone, out.with_suffix(".png"))


def plot(rows: list[Row], alone_p99: float, png: Path) -> None:
    """The steady tenant's TTFT p50 and p99 per row against the goal (2x its p99 alone), and each tenant's
    tokens/s: what the table says, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ttft, rate) = plt.subplots(1, 2, figsize=(9, 3.6))
    at = range(len(rows))
    ttft.bar([i - 0.2 for i in at], [r.steady_ttft_p50_ms for r in rows], 0.4, label="p50")
    ttft.bar([i + 0.2 for i in at], [r.steady_ttft_p99_ms for r in rows], 0.4, label="p99")
    ttft.axhline(2 * alone_p99, color="k", linestyle="--", linewidth=1, label="goal: 2x p99 alone")
    ttft.set_yscale("log")
    ttft.set_ylabel("steady tenant's TTFT (ms)")
    rate.bar([i - 0.2 for i in at], [r.steady_tokens_per_s for r in rows], 0.4, label="steady")
    rate.bar([i + 0.2 for i in at], [r.flood_tokens_per_s for r in rows], 0.4, label="flood")
    rate.set_ylabel("generated tokens / s")
    for ax in (ttft, rate):
        ax.set_xticks(list(at), [r.name.replace(", ", "\n") for r in rows], fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = report_parser(__doc__, "fair_shares")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--prefill-tokens", type=int, default=128, help="prompt tokens a step prefills at most")
    args = parser.parse_args()
    commit = begin_report(args, render)
    if commit is None:
        return
    tag = import_model(model_dir(90.0))
    text = long_prompt(tag, FLOOD_PROMPT)
    rows = []
    for name, (on, flood) in ROWS.items():
        served = serve(tag, STATE / "fair-shares", {"limits": {"max_streams": 4}},
                       prefill_tokens=str(args.prefill_tokens), fair_shares=str(on).lower())
        try:
            rows.append(measure(name, served.url, args.seconds, flood, make_keys(served.url, 2), text))
        finally:
            served.kill()
    meta = run_meta(commit, model=BENCH_LM, seconds=args.seconds, prefill_tokens=args.prefill_tokens)
    write_report(args.results, args.out, {"meta": meta, "rows": [asdict(r) for r in rows]}, render)


if __name__ == "__main__":
    main()
