"""Which stored version an endpoint starts with (`catalog.pick_default`), in a store of its own."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

PICK = """
import json, sys
import bentoml
from bentos.dataplane.catalog import pick_default

def make(name, passed, p50, cosine=None):
    meta = {"metrics": {"validation_passed": passed, "benchmark": {"latency_ms": {"p50": p50}}}}
    if cosine is not None:
        meta["batch_invariance_min_cosine"] = cosine
    labels = {"task": "tensor", "model": "pick", "family": "pick", "variant": name}
    with bentoml.models.create(f"pick-{name}", labels=labels, metadata=meta) as model:
        pass
    return str(model.tag)

def best(selector=None):
    tag = pick_default("tensor", selector)
    return tag.split(":")[0] if tag else None

out = {}
make("failed-gate", False, 0.1)  # the fastest of all, but it failed its accuracy gate
out["only_unvalidated"] = best()
out["only_unvalidated_by_name"] = best("pick")
make("not-invariant", True, 0.2, cosine=0.9)  # passed, but a row's answer depends on its batch
out["no_invariant_one"] = best()
make("slow", True, 0.9, cosine=0.9999)
out["invariant_beats_faster"] = best()
make("quick", True, 0.5)  # not measured for batch invariance: counted as invariant
out["fastest_invariant"] = best()
out["by_name"] = best("pick")
print(json.dumps(out))
"""


def test_the_gate_then_batch_invariance_then_speed_and_never_an_unvalidated_version(
        store_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-c", PICK], cwd=ROOT, env=store_env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    picked = json.loads(out.stdout.strip().splitlines()[-1])
    assert picked == {"only_unvalidated": None, "only_unvalidated_by_name": None,
                      "no_invariant_one": "pick-not-invariant", "invariant_beats_faster": "pick-slow",
                      "fastest_invariant": "pick-quick", "by_name": "pick-quick"}
