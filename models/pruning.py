"""Global magnitude pruning with torch.nn.utils.prune, and the sparsity it leaves."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.utils import prune

Params = list[tuple[nn.Module, str]]


def prunable(module: nn.Module) -> Params:
    return [(m, "weight") for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def magnitude_prune(module: nn.Module, amount: float) -> Params:
    params = prunable(module)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return params


def finalize(module: nn.Module, params: Params) -> dict[str, Any]:
    """Make the pruning permanent and measure the sparsity that results."""
    for m, name in params:
        prune.remove(m, name)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in params)
    total = sum(getattr(m, n).numel() for m, n in params)
    module.eval()
    return {"sparsity": round(zeros / total, 4), "pruned_tensors": len(params), "pruned_weights": total}
