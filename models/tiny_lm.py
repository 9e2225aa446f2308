"""A small causal language model trained here, in seconds, on text this module writes: no hub needed.

Tests, benchmarks and the demo need a generative model with real weights that writes recognizable text.
`write_corpus` makes English-like sentences from a small grammar (or, with `kind="digits"`, lines of
numbers: a model trained on it writes garbage for the English prompts, which is what a bad canary is);
`train` fits a GPT-2 or Llama architecture to it and saves a Hugging Face directory (`config.json`,
`model.safetensors`, `tokenizer.json`, `generation_config.json`), which is then imported the way a user
imports theirs: `python -m models import --task text-generation --hf DIR`.

    python -m models.tiny_lm OUT_DIR [--arch gpt2|llama] [--width 64] [--layers 2] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EOS = "<|endoftext|>"
Arch = Literal["gpt2", "llama"]
Kind = Literal["english", "digits", "wide"]
# "wide" adds the docstrings of these standard-library modules to the sentences: a vocabulary of a few
# thousand BPE tokens (the benchmark's model has 2,000), from text every Python install ships.
_WIDE_MODULES = ("argparse", "asyncio.events", "collections", "csv", "datetime", "decimal", "email.message",
                 "functools", "http.client", "inspect", "json", "logging", "pathlib", "shutil", "socket",
                 "statistics", "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest",
                 "urllib.parse", "zipfile")

_SUBJECTS = ["the cat", "the dog", "a small bird", "the old man", "my sister", "the teacher", "a young fox",
             "the farmer", "our neighbour", "the little girl"]
_VERBS = ["sat on", "looked at", "walked to", "jumped over", "found", "painted", "cleaned", "carried",
          "watched", "climbed"]
_OBJECTS = ["the mat", "the red door", "a green hill", "the river", "the garden wall", "a wooden box",
            "the kitchen table", "the tall tree", "the blue boat", "the quiet road"]
_TAILS = ["in the morning", "after lunch", "before the rain", "with great care", "every day", "at night",
          "without a sound", "for a long time"]


def _docstring_lines() -> list[str]:
    import importlib
    import inspect

    lines: list[str] = []
    for name in _WIDE_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *(v for _, v in inspect.getmembers(module) if inspect.isclass(v) or inspect.isfunction(v))]:
            doc = inspect.getdoc(obj) or ""
            lines += [line.strip() for line in doc.splitlines() if len(line.split()) >= 4]
    return lines


def sentences(kind: Kind, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    if kind == "wide":
        return sentences("english", count, seed) + _docstring_lines()
    if kind == "digits":
        return [" ".join(str(rng.randrange(1000)) for _ in range(rng.randrange(4, 9))) + " ;" for _ in range(count)]
    out = []
    for _ in range(count):
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
        out.append(text[0].upper() + text[1:])
    return out


def write_corpus(path: Path, kind: Kind = "english", count: int = 4000, seed: int = 0) -> Path:
    path.write_text("\n".join(sentences(kind, count, seed)) + "\n")
    return path


@dataclass(frozen=True)
class Shape:
    arch: Arch = "gpt2"
    width: int = 64
    layers: int = 2
    heads: int = 4
    vocab: int = 512
    context: int = 1024


def train_tokenizer(texts: list[str], vocab: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.save(str(out / "tokenizer.json"))


def _config(shape: Shape, eos_id: int):  # type: ignore[no-untyped-def]
    from transformers import GPT2Config, LlamaConfig

    if shape.arch == "gpt2":
        return GPT2Config(vocab_size=shape.vocab, n_positions=shape.context, n_embd=shape.width,
                          n_layer=shape.layers, n_head=shape.heads, bos_token_id=eos_id, eos_token_id=eos_id,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.width, intermediate_size=shape.width * 2,
                       num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                       num_key_value_heads=max(1, shape.heads // 2), max_position_embeddings=shape.context,
                       bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=False)


def train(out: Path, shape: Shape = Shape(), kind: Kind = "english", seconds: float | None = 20.0, seed: int = 0,
          steps: int = 2000, tokenizer_from: Path | None = None) -> Path:
    """Fit a model of `shape` to the corpus for `steps` optimizer steps, or until `seconds` have passed if that
    comes first; save it as a Hugging Face directory. `seconds=None`: no time bound, so that a seed and a step
    count give the same model on any machine, however loaded (tests rely on what the model writes).
    `tokenizer_from`: another model directory whose tokenizer this one shares (a canary of the same
    endpoint must read and write the same tokens), instead of one trained on this corpus."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, GenerationConfig

    out.mkdir(parents=True, exist_ok=True)
    texts = sentences(kind, 4000, seed)
    if tokenizer_from is not None:
        shutil.copyfile(tokenizer_from / "tokenizer.json", out / "tokenizer.json")
    else:
        train_tokenizer(texts, shape.vocab, out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)
    assert eos_id is not None, f"{EOS} is a special token of every tokenizer trained here"
    ids = [i for t in texts for i in [*tok.encode(t).ids, eos_id]]
    torch.manual_seed(seed)
    # The model's vocabulary is the tokenizer's (a small corpus stops BPE short of `shape.vocab`): every id it
    # can write is one the tokenizer can show, trained or not.
    shape = Shape(shape.arch, shape.width, shape.layers, shape.heads, tok.get_vocab_size(), shape.context)
    model = AutoModelForCausalLM.from_config(_config(shape, eos_id))
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    block, batch = 64, 16
    gen = torch.Generator().manual_seed(seed)
    deadline = None if seconds is None else time.monotonic() + seconds
    model.train()
    loss = torch.tensor(float("nan"))  # steps=0: an untrained model (random weights, a real graph)
    done = 0
    while done < steps and (deadline is None or time.monotonic() < deadline):
        done += 1
        starts = torch.randint(0, len(data) - block - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + block] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out))
    GenerationConfig(eos_token_id=eos_id, bos_token_id=eos_id, do_sample=False).save_pretrained(str(out))
    (out / "train.json").write_text(json.dumps({"arch": shape.arch, "kind": kind, "final_loss": float(loss.detach()),
                                                "tokens": len(ids), "steps": done, "seconds": seconds}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.tiny_lm", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--kind", choices=["english", "digits", "wide"], default="english")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    shape = Shape(args.arch, args.width, args.layers, args.heads, args.vocab)
    print(train(args.out, shape, args.kind, args.seconds))


if __name__ == "__main__":
    main()
