"""Models a user would bring, made here (nothing downloaded): a small CNN, a BERT-style
classifier from a config, and a two-input graph written with onnx.helper.

Each is registered into the store the way an imported model is (models.registry.register_file).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np

from models.registry import register_file

USER_CNN = """
    import torch
    from torch import nn


    class ColorNet(nn.Module):
        def __init__(self, classes: int = 3) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(16, classes)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(image).flatten(1))


    class Block(nn.Module):
        \"\"\"MobileNetV3's inverted residual: expand, depthwise, squeeze-excite, hard-swish, project.\"\"\"

        def __init__(self, c: int, hidden: int) -> None:
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
            self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                           nn.BatchNorm2d(hidden), nn.Hardswish())
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden, 8, 1), nn.ReLU(),
                                    nn.Conv2d(8, hidden, 1), nn.Hardsigmoid())
            self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.depthwise(self.expand(x))
            return x + self.project(h * self.se(h))


    def build() -> nn.Module:
        return ColorNet()


    def mobilenet_like() -> nn.Module:
        torch.manual_seed(0)  # the same network on every run: its untrained logits are near ties
        return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
                             Block(16, 48), Block(16, 48), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                             nn.Linear(16, 10)).eval()


    def not_a_module() -> int:
        return 3


    class Eig(nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            flat = image.flatten(2)
            return torch.linalg.eigh(flat @ flat.transpose(1, 2)).eigenvalues


    def unsupported() -> nn.Module:
        return Eig()
"""


COLORS = ("red", "green", "blue")
SIDE = 16
IMAGE_PRE = {"labels": list(COLORS), "output": "logits",
             "image": {"mode": "RGB", "size": [SIDE, SIDE], "mean": [0.5] * 3, "std": [0.5] * 3, "layout": "CHW"}}


def color_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy squares whose dominant channel is the label, as uint8 HWC pictures."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    pics = rng.integers(0, 90, (n, SIDE, SIDE, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        pics[i, ..., label] = rng.integers(170, 256, (SIDE, SIDE))
    return pics, labels


def normalise(pics: np.ndarray) -> np.ndarray:
    return ((pics.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2)


def png(picture: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


def color_cnn(dest: Path, seed: int = 0, steps: int = 60) -> Path:
    """A small CNN trained for a few seconds on coloured squares, exported with a dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    pics, labels = color_images(512, seed)
    x, y = torch.from_numpy(normalise(pics)), torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "color-cnn.onnx"
    torch.onnx.export(net, (x[:2],), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, opset_version=17)
    return path


def tokenizer_file() -> Path:
    from models.families.minilm import package_dir

    return package_dir() / "tokenizer.json"


def bert_classifier(dest: Path, seed: int = 0) -> tuple[Path, dict[int, str]]:
    """A BERT-style sequence classifier from a small BertConfig, exported to ONNX."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    id2label = {0: "negative", 1: "positive"}
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "bert-classifier.onnx"
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 7592, 102, 0]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    torch.onnx.export(Logits(), (ids, (ids > 0).long(), torch.zeros_like(ids)), str(path), input_names=names,
                      output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}}, dynamo=False,
                      opset_version=17)
    return path, id2label


def two_input_graph(dest: Path, scale: float = 1.0) -> Path:
    """sum = scale * (a + b) and dot = sum(a * b, axis 1): two named inputs, two named outputs."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3])
    dot = helper.make_tensor_value_info("dot", TensorProto.FLOAT, ["batch"])
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Mul", ["ab", "k"], ["sum"]),
             helper.make_node("Mul", ["a", "b"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "axes"], ["dot"], keepdims=0)]
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [scale]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(nodes, "two_inputs", [a, b], [total, dot], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"two-inputs-{scale:g}.onnx"
    onnx.save(model, str(path))
    return path


def register_user_models(work: Path) -> dict[str, str]:
    """Two versions of each, ready for a 90/10 split."""
    tok = work / "tok"
    tok.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_file(), tok / "tokenizer.json")
    bert, id2label = bert_classifier(work / "bert")
    text_pre = {"tokenizer": "tokenizer.json", "max_tokens": 128, "labels": [id2label[i] for i in sorted(id2label)],
                "problem": "single_label"}
    tags = {
        "cnn": register_file("colors", color_cnn(work / "cnn", seed=0), task="image-classification",
                             preprocess=IMAGE_PRE),
        "cnn2": register_file("colors", color_cnn(work / "cnn2", seed=1), task="image-classification",
                              preprocess=IMAGE_PRE, variant="retrained"),
        "bert": register_file("sentiment", bert, task="text-classification", preprocess=text_pre,
                              extra_files={"tokenizer.json": tok / "tokenizer.json"}),
        "tensor": register_file("adder", two_input_graph(work / "t1"), task="tensor", preprocess={}),
        "tensor2": register_file("adder", two_input_graph(work / "t2", 1.0), task="tensor", preprocess={},
                                 variant="copy"),
    }
    tags["bert2"] = register_file("sentiment", bert, task="text-classification", preprocess=text_pre,
                                  extra_files={"tokenizer.json": tok / "tokenizer.json"}, variant="copy")
    return tags


POSITIVE = ("a wonderful film", "great acting and a lovely story", "i loved it", "brilliant and moving",
            "what a delight", "superb from start to end", "funny and warm", "the best film this year")
NEGATIVE = ("a terrible film", "boring and far too long", "i hated it", "awful acting", "what a waste of time",
            "dull from start to end", "painful to watch", "the worst film this year")


def review_rows() -> list[tuple[str, str]]:
    return [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]


def hf_sentiment_dir(dest: Path, steps: int = 40, seed: int = 0) -> Path:
    """A BERT-style classifier from a small BertConfig, fine-tuned a few steps, saved with save_pretrained
    next to a tokenizer.json: what a Hugging Face checkpoint directory holds."""
    return hf_classifier_dir(dest, review_rows(), ["negative", "positive"], steps, seed)


ANIMALS = ("cat", "dog", "bird", "fox")


def topic_rows(n: int = 400, seed: int = 0, width: int = 40) -> list[tuple[str, str]]:
    """Pieces of text from models/tiny_lm.py's grammar, cut anywhere (as a stream is cut into chunks), labelled
    "animals" when they name one as a whole word, else "other"."""
    import random
    import re

    from models.tiny_lm import sentences

    text = " ".join(sentences("english", n, seed=seed))
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = rng.randrange(0, len(text) - width)
        piece = text[start:start + rng.randrange(width // 2, width + 1)]
        named = re.search(r"\b(" + "|".join(ANIMALS) + r")\b", piece.lower())
        rows.append((piece, "animals" if named else "other"))
    return rows


def import_topics(root: Path) -> str:
    """The topic classifier trained in `root` and imported with `python -m models import` as a user imports theirs
    (into the store BENTOML_HOME names): its fp32 tag, or RuntimeError with the importer's error."""
    import json
    import subprocess
    import sys

    hf = hf_classifier_dir(root / "hf", topic_rows(), ["animals", "other"], steps=80)
    rows = topic_rows(120, seed=1)
    (root / "validation.jsonl").write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    (root / "calibration.txt").write_text("\n".join(t for t, _ in rows))
    proc = subprocess.run([sys.executable, "-m", "models", "import", "--name", "topics", "--task",
                           "text-classification", "--hf", str(hf), "--validation", str(root / "validation.jsonl"),
                           "--calibration", str(root / "calibration.txt"), "--variant", "fp32"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"import failed: {proc.stderr[-3000:]}")
    return proc.stdout.split()[-1]


def hf_classifier_dir(dest: Path, rows: list[tuple[str, str]], labels: list[str], steps: int = 40,
                      seed: int = 0) -> Path:
    """A small BERT classifier of `rows` (text, label), fine-tuned `steps` full-batch steps, saved as a Hugging
    Face directory with its tokenizer.json."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    id2label = dict(enumerate(labels))
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(labels), id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config)
    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_padding()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(128)
    enc = tok.encode_batch([t for t, _ in rows])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    y = torch.tensor([labels.index(label) for _, label in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=y).loss.backward()
        opt.step()
    model.eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    shutil.copyfile(tokenizer_file(), dest / "tokenizer.json")
    return dest


def user_cnn_files(root: Path) -> Path:
    """The user's own files, outside the repository: model code (my_cnn.py), weights trained for a
    few seconds, a labeled validation set, calibration inputs and the class names."""
    import sys
    import textwrap

    import torch

    (root / "my_cnn.py").write_text(textwrap.dedent(USER_CNN))
    sys.path.insert(0, str(root))
    try:
        import my_cnn  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    net = my_cnn.build()
    pics, labels = color_images(600, seed=0)
    x, y = torch.from_numpy(normalise(pics)), torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.eval().state_dict(), root / "weights.pt")
    vp, vl = color_images(200, seed=1)
    np.savez(root / "val.npz", inputs=normalise(vp), labels=vl)
    np.savez(root / "calib.npz", inputs=normalise(color_images(64, seed=2)[0]))
    (root / "labels.txt").write_text("\n".join(COLORS) + "\n")
    return root
