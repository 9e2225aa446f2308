"""A shared system prompt over 8 streams: the prefix cache on and off, in one run.

The generation benchmark's model (bench/generation.py: GPT-2 architecture, 256 wide, 6 layers, fp32 ONNX)
behind a real `bentoml serve`. Eight callers at once, one request after another, each a 500-token system
prompt followed by a five-word question of its own, 32 tokens out:

- off: `SWITCHYARD_PREFIX_CACHE_SHARE=0`, every prompt prefilled whole;
- on, one key: the cache on (its default share), every caller with the same API key;
- on, 8 keys, shared: each caller its own key, the system prompt in the endpoint's `shared_prefixes`;
- on, 8 keys: each caller its own key and nothing marked shared (each key warms its own entries).

Reported per row: time to first token p50/p99, output tokens per second, and the share of prompt tokens
found in the cache (from the server's own counters). Writes bench/results/prefix_cache.json and
docs/benchmarks-prefix-cache.md.

    python bench/prefix_cache.py                  # about 3 minutes
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

from bench.generation import BENCH_LM, STATE, TOKEN, begin_report, import_model, model_dir, prompts, quantile  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402
from bench.long_prompts import Times, long_prompt, serve, stream  # noqa: E402

CALLERS, NEW_TOKENS, SYSTEM_TOKENS = 8, 32, 500
ROWS: dict[str, tuple[dict[str, str], bool, bool]] = {  # name: (settings, a key per caller, system shared)
    "off": ({"prefix_cache_share": "0"}, False, False),
    "on, one key": ({}, False, False),
    "on, 8 keys, shared": ({}, True, True),
    "on, 8 keys": ({}, True, False),
}


@dataclass
class Row:
    setting: str
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests: int
    cached_share: float  # of prompt tokens, from the server's counters
    errors: int


async def callers(url: str, seconds: float, system: str, keys: list[str]) -> tuple[list[Times], int, float]:
    host, port = url.removeprefix("http://").split(":")
    texts, done, errors = prompts(), [], 0
    end = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < end:
            i += 1
            body = {"prompt": f"{system} {texts[(n * 31 + i) % len(texts)]}", "max_tokens": NEW_TOKENS,
                    "ignore_eos": True}
            try:
                done.append(await stream(host, int(port), body, keys[n % len(keys)]))
            except (OSError, RuntimeError):
                errors += 1
                await asyncio.sleep(0.05)

    began = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    return done, errors, time.perf_counter() - began


def counter(url: str, name: str, **labels: str) -> float:
    import httpx

    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def make_keys(url: str, n: int) -> list[str]:
    import httpx

    keys = []
    for i in range(n):
        r = httpx.post(f"{url}/v1/admin/keys", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                       json={"name": f"caller-{i}", "rate": 100_000, "burst": 100_000, "reason": "benchmark"})
        r.raise_for_status()
        keys.append(str(r.json()["secret"]))
    return keys


def measure(name: str, url: str, seconds: float, system: str, keys: list[str]) -> Row:
    asyncio.run(callers(url, min(3.0, seconds / 3), system, keys))  # warm-up: the cache fills here
    hits0 = counter(url, "switchyard_prefix_cache_tokens_total")
    prompt0 = counter(url, "switchyard_tokens_total", kind="prompt")
    done, errors, wall = asyncio.run(callers(url, seconds, system, keys))
    hits = counter(url, "switchyard_prefix_cache_tokens_total") - hits0
    prompt = counter(url, "switchyard_tokens_total", kind="prompt") - prompt0
    ttft = [t.ttft_s * 1000 for t in done]
    row = Row(name, sum(t.tokens for t in done) / wall, quantile(ttft, 0.5), quantile(ttft, 0.99), len(done),
              hits / prompt if prompt else 0.0, errors)
    print(f"  {name:20s} {row.tokens_per_s:6.0f} tok/s  ttft p50 {row.ttft_p50_ms:7.1f} p99 {row.ttft_p99_ms:7.1f} ms"
          f"  cached {row.cached_share:.0%} of prompt tokens  requests {row.requests}  errors {errors}", flush=True)
    return row


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, rows = data["meta"], [Row(**r) for r in data["rows"]]
    lines = ["# A shared system prompt: the prefix cache on and off", "",
             written_by("prefix_cache.py", results, meta), "",
             f"{CALLERS} callers at once, one request after another: a {SYSTEM_TOKENS}-token system prompt and a "
             f"five-word question of the caller's own, {NEW_TOKENS} tokens out. *Cached* is the share of prompt "
             "tokens the server found in its prefix cache (its own counters).", "",
             "| cache | tokens/s | TTFT p50 | TTFT p99 | cached | requests | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.setting} | {r.tokens_per_s:.0f} | {r.ttft_p50_ms:.0f} ms | {r.ttft_p99_ms:.0f} ms | "
                     f"{r.cached_share:.0%} | {r.requests} | {r.errors} |")
    off = next((r for r in rows if r.setting == "off"), None)
    if off:
        lines.append("")
        lines += [f"- {r.setting}: TTFT p50 {r.ttft_p50_ms / off.ttft_p50_ms:.2f}x and tokens/s "
                  f"{r.tokens_per_s / off.tokens_per_s:.2f}x the cache off." for r in rows if r is not off]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = report_parser(__doc__, "prefix_cache")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    commit = begin_report(args, render)
    if commit is None:
        return
    tag = import_model(model_dir(90.0))
    system = long_prompt(tag, SYSTEM_TOKENS)
    rows: list[Row] = []
    for i, (name, (settings, per_caller, shared)) in enumerate(ROWS.items()):
        endpoint: dict[str, Any] = {"shared_prefixes": [system]} if shared else {}
        served = serve(tag, STATE / "bench-prefix-cache" / str(i), endpoint, **settings)
        try:
            keys = make_keys(served.url, CALLERS) if per_caller else [""]
            rows.append(measure(name, served.url, args.seconds, system, keys))
        finally:
            served.kill()
    meta = run_meta(commit, model=BENCH_LM, seconds=args.seconds)
    write_report(args.results, args.out, {"meta": meta, "rows": [asdict(r) for r in rows]}, render)


if __name__ == "__main__":
    main()
