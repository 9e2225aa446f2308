"""text-generation, build half: a Hugging Face causal LM exported with its KV cache, judged on your text.

Export: the model is wrapped so that the past keys and values of every layer are plain inputs and the
present ones plain outputs (bentos/tasks/text_generation.py describes the graph), exported once for
prefill and decode alike. Parity with torch is checked twice: logits on prompts of different lengths in
one left-padded batch (within --parity-tolerance), and greedy tokens of the ONNX decode loop against
`transformers`' own `generate` with its cache (equal, token for token).

Gate, against the fp32 export on the validation text: perplexity within --max-perplexity-ratio of fp32's,
and greedy next-token agreement (the argmax at every position of every line) at least --min-token-agreement.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bentos.tasks import Codec
from bentos.tasks.text_generation import GenerationCodec, GraphSpec, left_padded
from models.errors import BuildError
from models.tasks.base import Dataset, fingerprint

OPSET = 17
PARITY_TOKENS = 16
EVAL_LINES = 64


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    """Plain text, one passage a line (blank lines skipped)."""
    if not path.is_file():
        raise BuildError(f"{path} does not exist")
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        raise BuildError(f"{path} has {len(lines)} non-empty lines; the gate needs at least 2 lines of text")
    return Dataset(lines, None, str(path), fingerprint(path))


def graph_spec_of(config: Any, eos_id: int | None) -> GraphSpec:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    given: Any = getattr(config, "head_dim", None)  # Llama configs carry it; GPT-2's follow from the width
    head_dim = int(given) if given else int(config.hidden_size) // heads
    positions: Any = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    context = int(positions or 2048)
    return GraphSpec(int(config.num_hidden_layers), kv_heads, head_dim, "float32", eos_id, context,
                     int(config.vocab_size))


def _wrapped(model: Any, layers: int) -> Any:
    """`model` with flat past/present tensors, as ONNX needs them."""
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return WithCache().eval()


def export(model: Any, spec: GraphSpec, dest: Path) -> str:
    """The graph with the KV cache as plain inputs and outputs; which exporter made it. torch.export's
    (dynamo) first: its graph has about a quarter of the nodes of the TorchScript tracer's (531 against
    289 on a 6-layer GPT-2 here, most of the difference shape arithmetic), and decodes faster for it
    (docs/benchmarks-generation.md); the tracer when torch.export cannot take the model."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        _export(model, spec, dest, dynamo=True)
        return "dynamo"
    except BuildError:
        _export(model, spec, dest, dynamo=False)
        return "torchscript"


def _export(model: Any, spec: GraphSpec, dest: Path, dynamo: bool) -> None:
    import torch

    past_names, out_names = spec.past_names, spec.output_names
    names = ["input_ids", "attention_mask", "position_ids", *past_names]
    b, s, p = 2, 3, 2
    args = (torch.ones(b, s, dtype=torch.int64), torch.ones(b, p + s, dtype=torch.int64),
            torch.arange(p, p + s).repeat(b, 1),
            *(torch.zeros(b, spec.kv_heads, p, spec.head_dim) for _ in past_names))
    options: dict[str, Any]
    if dynamo:
        batch, seq, past, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past", "total"))
        shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                  tuple({0: batch, 2: past} for _ in past_names))
        # One self-contained file: the store and the optimizer copy model.onnx alone.
        options = {"dynamic_shapes": shapes, "dynamo": True, "opset_version": 18, "optimize": True,
                   "external_data": False}
    else:
        axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                           "attention_mask": {0: "batch", 1: "total"},
                                           "position_ids": {0: "batch", 1: "sequence"},
                                           "logits": {0: "batch", 1: "sequence"}}
        axes.update({n: {0: "batch", 2: "past"} for n in past_names})
        axes.update({n: {0: "batch", 2: "total"} for n in out_names[1:]})
        options = {"dynamic_axes": axes, "dynamo": False, "opset_version": OPSET}
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(_wrapped(model, spec.layers), args, str(dest), input_names=names,
                              output_names=out_names, **options)
    except Exception as exc:
        raise BuildError(f"export to ONNX with the KV cache failed: {str(exc).strip().splitlines()[0][:300]}") \
            from None


def greedy(session: Any, codec: GenerationCodec, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    """Greedy tokens for a batch of prompts with the cache, as the server's decode loop runs them (stops at
    the end-of-text token)."""
    feed = codec.prefill_feed(prompts)
    mask, pos = feed["attention_mask"], feed["position_ids"][:, -1:]
    out = [[] for _ in prompts]  # type: list[list[int]]
    done = [False] * len(prompts)
    names = codec.output_names
    for _ in range(tokens):
        results = session.run(names, feed)
        nxt = results[0][:, -1, :].argmax(-1)
        for b, t in enumerate(nxt):
            if not done[b]:
                out[b].append(int(t))
                done[b] = int(t) == codec.spec.eos_id
        if all(done):
            break
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
        pos = pos + 1
        feed = {"input_ids": nxt[:, None].astype(np.int64), "attention_mask": mask, "position_ids": pos,
                **dict(zip(codec.spec.past_names, results[1:], strict=True))}
    return [o[:-1] if o and o[-1] == codec.spec.eos_id else o for o in out]


def parity(model: Any, session: Any, codec: GenerationCodec, texts: list[str], tolerance: float) -> dict[str, Any]:
    """The exported graph against torch: logits in a left-padded batch, and greedy tokens with the cache."""
    import torch

    prompts = [codec.tokenize(t)[:32] or [0] for t in texts[:4]]
    got = session.run(["logits"], codec.prefill_feed(prompts))[0]
    ids, _, _ = left_padded(prompts)
    diff = 0.0
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            ref = model(torch.tensor([prompt])).logits[0].numpy()
            diff = max(diff, float(np.abs(got[b, ids.shape[1] - len(prompt):] - ref).max()))
    if diff > tolerance:
        raise BuildError(f"ONNX logits differ from torch by {diff:.2e}, over --parity-tolerance {tolerance:.0e}")
    ours = greedy(session, codec, prompts, PARITY_TOKENS)
    eos = codec.spec.eos_id
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            ref = model.generate(torch.tensor([prompt]), max_new_tokens=PARITY_TOKENS, do_sample=False,
                                 pad_token_id=eos if eos is not None else 0)[0, len(prompt):].tolist()
            ref = [t for t in ref if t != eos][:len(ours[b])] if eos in ref else ref
            if ours[b] != ref[:len(ours[b])] or (eos not in ref and len(ours[b]) != len(ref)):
                raise BuildError(f"greedy tokens of the ONNX decode loop differ from transformers' generate on "
                                 f"prompt {b}: {ours[b][:8]}... against {ref[:8]}...")
    return {"logits_max_abs_diff": diff, "tolerance": tolerance, "greedy_tokens_equal": PARITY_TOKENS,
            "prompts": len(prompts)}


def _token_logprobs(session: Any, codec: GenerationCodec, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Log-probabilities of each next token of `ids`, and the argmax at each position."""
    logits = session.run(["logits"], codec.prefill_feed([ids]))[0][0, :-1].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return logp[np.arange(len(ids) - 1), ids[1:]], logits.argmax(axis=1)


def evaluate(candidate: Any, baseline: Any, codec: GenerationCodec, texts: list[str]) -> dict[str, Any]:
    """Perplexity of both on the validation text, and how often their next-token argmax agrees."""
    context = codec.spec.context
    lines = [ids[:context] for t in texts[:EVAL_LINES] if len(ids := codec.tokenize(t)) >= 2]
    if not lines:
        raise BuildError("the validation text has no line of 2 tokens or more")
    nll_c, nll_b, agree, total = 0.0, 0.0, 0, 0
    for ids in lines:
        lc, ac = _token_logprobs(candidate, codec, ids)
        lb, ab = _token_logprobs(baseline, codec, ids)
        nll_c, nll_b = nll_c - float(lc.sum()), nll_b - float(lb.sum())
        agree, total = agree + int((ac == ab).sum()), total + len(ac)
    ppl_c, ppl_b = float(np.exp(nll_c / total)), float(np.exp(nll_b / total))
    return {"perplexity": ppl_c, "baseline_perplexity": ppl_b, "perplexity_ratio": ppl_c / ppl_b,
            "next_token_agreement": agree / total, "tokens": total, "lines": len(lines)}


def gate(metrics: dict[str, Any], thresholds: dict[str, float], data: Dataset) -> list[str]:
    where = f"{data.source} (sha256 {data.sha256[:12]})"
    out = []
    ratio, limit = metrics["perplexity_ratio"], thresholds["max_perplexity_ratio"]
    if ratio > limit:
        out.append(f"perplexity {metrics['perplexity']:.3f} is {ratio:.4f}x fp32's {metrics['baseline_perplexity']:.3f}"
                   f" on {where}, over --max-perplexity-ratio {limit:.4f} by {ratio - limit:.4f}")
    agree, floor = metrics["next_token_agreement"], thresholds["min_token_agreement"]
    if agree < floor:
        out.append(f"greedy next-token agreement with fp32 {agree:.4f} on {where} is under --min-token-agreement "
                   f"{floor:.4f} by {floor - agree:.4f}")
    return out


def headline(metrics: dict[str, Any]) -> str:
    return f"ppl {metrics['perplexity']:.3f}"
