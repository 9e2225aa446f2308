"""Digits build half: scikit-learn's load_digits, an MLP and a CNN, seeded training.

Scaling to 0..1 and softmax are inside the graph, so the server feeds raw 0..16 pixels
and reads probabilities.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from bentos.tasks.base import tensor
from bentos.tasks.image_classification import ImageCodec
from models.errors import BuildError
from models.families.base import ALL_VARIANTS, Builder, run_batched
from models.pruning import finalize, magnitude_prune
from models.workdir import ModelDir, write_json

SPLIT_SEED = 0  # the split is fixed; --seed changes training only
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
N_PIXELS, N_CLASSES, PIXEL_MAX = 64, 10, 16.0
N_EXAMPLES = 40
# The serving contract: 64 raw pixels in 0..16 (scaling and softmax are in the graph); images are
# cropped to their ink and block-averaged to 8x8, as scikit-learn's digits were made.
SIGNATURE = {"inputs": [{**tensor(INPUT_NAME, "float32", ["batch", N_PIXELS]), "range": [0.0, PIXEL_MAX]}],
             "outputs": [tensor(OUTPUT_NAME, "float32", ["batch", N_CLASSES])]}
PREPROCESS = {"pixel_range": [0.0, PIXEL_MAX], "output": "probabilities", "image": {"fit": "ink", "scale": PIXEL_MAX},
              "examples": "examples.json"}


@lru_cache(maxsize=1)
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed stratified split: fit / calibration (held-out train) / validation / test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.15, stratify=y_rest, random_state=SPLIT_SEED)
    x_fit, x_cal, y_fit, y_cal = train_test_split(
        x_train, y_train, test_size=0.1, stratify=y_train, random_state=SPLIT_SEED)
    return {"fit": (x_fit, y_fit), "calibration": (x_cal, y_cal), "val": (x_val, y_val), "test": (x_test, y_test)}


class DigitsNet(nn.Module):
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels / PIXEL_MAX), dim=1)


class MLP(DigitsNet):
    def __init__(self, hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = N_PIXELS
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, N_CLASSES))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(DigitsNet):
    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 4 * 4, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)))


ARCHS: dict[str, Any] = {"mlp": MLP, "cnn": CNN}
# A narrower CNN: an MLP student of similar size lost 1.0-1.4 points, this one 0.3.
STUDENT_CHANNELS, STUDENT_HIDDEN = (8, 16), 32


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def fit(net: DigitsNet, epochs: int, seed: int, desc: str, teacher: DigitsNet | None = None,
        temperature: float = 4.0, alpha: float = 0.7) -> list[float]:
    """Adam on the fit split; with a teacher, the loss mixes soft targets (Hinton et al.)."""
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in splits()["fit"])
    x = x / PIXEL_MAX
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    net.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            logits = net.logits(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.softmax(teacher.logits(x[idx]) / temperature, dim=1)
                kd = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), soft,
                                          reduction="batchmean") * temperature**2
                loss = alpha * kd + (1 - alpha) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    net.eval()
    return losses


def torch_accuracy(net: DigitsNet, split: str) -> float:
    x, y = splits()[split]
    with torch.no_grad():
        return accuracy(net(torch.from_numpy(x)).numpy(), y)


class DigitsBuilder(Builder):
    family: ClassVar[str] = "digits"
    task: ClassVar[str] = "image-classification"
    arch: ClassVar[str]
    parity_tolerance: ClassVar[float] = 1e-4
    input_names: ClassVar[tuple[str, ...]] = (INPUT_NAME,)
    output_name: ClassVar[str] = OUTPUT_NAME
    epochs: ClassVar[int] = 60
    prune_amount: ClassVar[float] = 0.5
    finetune_epochs: ClassVar[int] = 10

    def codec(self) -> ImageCodec:
        return ImageCodec(SIGNATURE, PREPROCESS)

    def extra_artifacts(self) -> dict[str, Path]:
        """Test-split examples for the playground, stored with the model (the image needs no scikit-learn)."""
        x, y = splits()["test"]
        picks = np.random.default_rng(0).choice(len(x), N_EXAMPLES, replace=False)
        rows = [{"name": f"example {i}: a {int(y[j])}", "input": x[j].tolist(), "label": int(y[j])}
                for i, j in enumerate(picks)]
        path = Path(tempfile.mkdtemp(prefix="digits-examples-")) / "examples.json"
        path.write_text(json.dumps(rows))
        return {"examples.json": path}

    def train(self, md: ModelDir) -> dict[str, Any]:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(self.settings.threads)
        torch.manual_seed(self.settings.seed)  # before construction: it fixes the initial weights
        net = ARCHS[self.arch]()
        losses = fit(net, self.epochs, self.settings.seed, f"train {self.key}")
        md.torch_dir.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), md.torch_dir / "model.pt")
        report = {"arch": self.arch, "epochs": self.epochs, "seed": self.settings.seed, "final_loss": losses[-1],
                  "val_accuracy": torch_accuracy(net, "val"), "test_accuracy": torch_accuracy(net, "test"),
                  "parameters": sum(p.numel() for p in net.parameters())}
        write_json(md.torch_dir / "train.json", report)
        return report

    def load_torch(self, md: ModelDir) -> DigitsNet:
        path = md.torch_dir / "model.pt"
        if not path.is_file():
            raise BuildError(f"{path} is missing: run `python -m models train {self.key}` first")
        net = ARCHS[self.arch]()
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        return {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=4096)}}

    def eval_items(self) -> list[Any]:
        return splits()["test"][0].tolist()

    def calibration_items(self) -> list[Any]:
        return splits()["calibration"][0].tolist()

    def static_quant_exclude(self, model: onnx.ModelProto) -> list[str]:
        # The first layer reads raw pixels; in int8 it cost the CNN 1.1 points, in float 0.3.
        weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        return weighted[:1]

    def prune(self, module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        params = magnitude_prune(module, self.prune_amount)
        # The masks stay attached while fine-tuning, so pruned weights stay zero.
        fit(module, self.finetune_epochs, self.settings.seed, f"fine-tune {self.key}")  # type: ignore[arg-type]
        info = finalize(module, params)
        info.update(method="global l1_unstructured", amount=self.prune_amount, finetune_epochs=self.finetune_epochs)
        return module, info

    def evaluate(self, candidate: ort.InferenceSession, baseline: ort.InferenceSession) -> dict[str, Any]:
        items, labels = self.eval_items(), splits()["test"][1]
        cand = run_batched(candidate, self.codec(), items)
        base = run_batched(baseline, self.codec(), items)
        acc, base_acc = accuracy(cand, labels), accuracy(base, labels)
        return {"accuracy": acc, "baseline_accuracy": base_acc,
                "accuracy_drop_points": round((base_acc - acc) * 100, 4),
                "label_agreement": float((cand.argmax(1) == base.argmax(1)).mean()), "test_rows": len(items)}

    def gate(self, metrics: dict[str, Any], max_drop: float) -> list[str]:
        drop = metrics["accuracy_drop_points"]
        if drop > max_drop:
            return [f"accuracy drop {drop:.2f} points exceeds --max-drop {max_drop:.2f} by {drop - max_drop:.2f}"]
        return []

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"acc {metrics['accuracy'] * 100:.2f}%"


class DigitsMLP(DigitsBuilder):
    key = "digits-mlp"
    arch = "mlp"
    variants = tuple(v for v in ALL_VARIANTS if v != "distilled")


class DigitsCNN(DigitsBuilder):
    key = "digits-cnn"
    arch = "cnn"
    variants = ALL_VARIANTS
    temperature = 4.0
    alpha = 0.7
    student_epochs = 80

    def distill(self, md: ModelDir) -> tuple[torch.nn.Module, dict[str, Any]]:
        teacher = self.load_torch(md)
        torch.manual_seed(self.settings.seed)
        student = CNN(STUDENT_CHANNELS, STUDENT_HIDDEN)
        fit(student, self.student_epochs, self.settings.seed, "distill digits-cnn", teacher=teacher,
            temperature=self.temperature, alpha=self.alpha)
        return student, {
            "teacher": self.key, "student": f"cnn channels={list(STUDENT_CHANNELS)} hidden={STUDENT_HIDDEN}",
            "temperature": self.temperature,
            "alpha": self.alpha, "epochs": self.student_epochs,
            "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "student_test_accuracy_torch": torch_accuracy(student, "test"),
        }
