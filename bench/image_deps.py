"""How much Python the bento's image installs, against the same bento carrying torch.

Reads the pinned packages from bentofile.yaml, walks their dependency closure through the
installed distributions' metadata (this venv has every one of them), and sums the files
each distribution installed. Offline and exact for this platform's wheels.

    python bench/image_deps.py            # writes docs/image-size.md
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["torch==2.13.0", "transformers"]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _active(requirement: str) -> bool:
    """Skip extras-only and platform-excluded requirements."""
    if ";" not in requirement:
        return True
    from packaging.markers import Marker

    marker = Marker(requirement.split(";", 1)[1])
    return marker.evaluate({"extra": ""})


def closure(requirements: list[str]) -> dict[str, int]:
    """Distribution name -> bytes installed, for the requirements and all they pull in."""
    sizes: dict[str, int] = {}
    todo = [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in sizes:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sizes[name] = 0  # not installed here (platform-specific); counted as zero
            continue
        sizes[name] = sum((f.size or 0) for f in (dist.files or []))
        todo.extend(_name(r) for r in (dist.requires or []) if _active(r))
    return sizes


def serving_packages(bentofile: Path) -> list[str]:
    return list(yaml.safe_load(bentofile.read_text())["python"]["packages"])


def report(bentofile: Path) -> str:
    packages = serving_packages(bentofile)
    lean, heavy = closure(packages), closure(packages + HEAVY)
    mb = 1e6
    top = sorted(heavy.items(), key=lambda kv: -kv[1])[:8]
    lines = [
        "# Image size: Python dependencies of the bento",
        "",
        "Made by `python bench/image_deps.py`: the dependency closure of `bentofile.yaml`'s pinned",
        "packages, summed over the files each installed distribution owns (Linux x86_64 wheels, Python 3.11).",
        "",
        "| bento | distributions | installed size |",
        "|---|---|---|",
        f"| Switchyard (onnxruntime + tokenizers, no torch) | {len(lean)} | {sum(lean.values()) / mb:,.0f} MB |",
        f"| same, plus torch 2.13.0 (CPU) and transformers | {len(heavy)} | {sum(heavy.values()) / mb:,.0f} MB |",
        "",
        f"Leaving torch and transformers out makes the image's Python layer "
        f"{sum(heavy.values()) / max(1, sum(lean.values())):.1f}x smaller. The CPU build of torch is"
        " measured here; the default PyPI torch is a CUDA build that adds several GB more.",
        "",
        "Largest distributions in the heavier closure:",
        "",
        "| distribution | MB | in Switchyard's image |",
        "|---|---|---|",
        *(f"| {n} | {s / mb:,.1f} | {'yes' if n in lean else 'no'} |" for n, s in top),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bentofile", type=Path, default=ROOT / "bentofile.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "image-size.md")
    args = parser.parse_args()
    text = report(args.bentofile)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
