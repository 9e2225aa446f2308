"""`python -m models import --task text-generation`: a Llama-architecture directory imports as GPT-2's does,
and a variant that fails the gate says which metric and by how much; nothing of it is stored."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CLI


def test_a_llama_directory_imports_with_its_kv_cache(cli: CLI, tiny_lms: dict[str, Path], tiny_lm_text: Path,
                                                     tmp_path: Path) -> None:
    proc = cli("import", "--name", "tiny-llama", "--task", "text-generation", "--hf", str(tiny_lms["llama"]),
               "--validation", str(tiny_lm_text), "--variant", "fp32", "--work-dir", str(tmp_path), check=True)
    assert proc.stdout.split()[-1].startswith("tiny-llama-fp32:")
    report = json.loads((tmp_path / "import-tiny-llama" / "export" / "export.json").read_text())
    assert report["parity"]["logits_max_abs_diff"] <= 1e-4 and report["parity"]["greedy_tokens_equal"] == 16
    assert report["exporter"] in ("dynamo", "torchscript")
    listed = cli("list", check=True).stdout
    assert "tiny-llama-fp32" in listed and "ppl" in listed


def test_a_failed_gate_names_the_metric_and_by_how_much(cli: CLI, tiny_lms: dict[str, Path],
                                                        tiny_lm_text: Path, tmp_path: Path) -> None:
    proc = cli("import", "--name", "strict", "--task", "text-generation", "--hf", str(tiny_lms["gpt2"]),
               "--validation", str(tiny_lm_text), "--variant", "int8-dynamic", "--min-token-agreement", "0.999",
               "--work-dir", str(tmp_path))
    assert proc.returncode != 0
    assert "greedy next-token agreement with fp32" in proc.stderr and "--min-token-agreement 0.9990 by" in proc.stderr
    assert "strict" not in cli("list", check=True).stdout
