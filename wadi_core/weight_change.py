"""How much a fine-tune changed a network's weights, split into row norm and row direction.

The WaDi paper's observation: distillation changes the direction of weight rows far more than
their norm. Definitions used everywhere in wadi (stated in every output):

- norm change of a layer = mean over rows of ``| ||w'|| - ||w|| | / ||w||``;
- direction change of a layer = mean over rows of ``1 - cos(w, w')``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

NORM_DEFINITION = "mean over rows of | ||w'|| - ||w|| | / ||w||"
DIRECTION_DEFINITION = "mean over rows of 1 - cos(w, w')"


def row_changes(base: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(relative norm change, 1 - cosine)`` of two weights of the same shape (rows = outputs)."""
    if base.shape != other.shape:
        raise ValueError(f"weights of shape {tuple(base.shape)} and {tuple(other.shape)} cannot be compared")
    a = base.reshape(base.shape[0], -1).double()
    b = other.reshape(other.shape[0], -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    safe = na.clamp(min=1e-12)
    norm = (nb - na).abs() / safe
    cosine = (a * b).sum(1) / (safe * nb.clamp(min=1e-12))
    return norm, 1 - cosine.clamp(-1, 1)


def layer_changes(base: nn.Module, other: nn.Module, names: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
    """``{layer: (norm change, direction change)}`` for every ``nn.Linear`` (or the named layers)."""
    base_modules, other_modules = dict(base.named_modules()), dict(other.named_modules())
    if names is None:
        names = [n for n, m in base_modules.items() if isinstance(m, nn.Linear)]
    out = {}
    for name in names:
        norm, direction = row_changes(base_modules[name].weight.detach(), other_modules[name].weight.detach())
        out[name] = (norm.mean().item(), direction.mean().item())
    return out


def mean_changes(base: nn.Module, other: nn.Module, names: Iterable[str] | None = None) -> dict[str, float]:
    """Averages over layers of :func:`layer_changes`, and their ratio direction / norm."""
    per_layer = layer_changes(base, other, names)
    norm = sum(v[0] for v in per_layer.values()) / max(1, len(per_layer))
    direction = sum(v[1] for v in per_layer.values()) / max(1, len(per_layer))
    return {"norm_change": norm, "direction_change": direction,
            "direction_over_norm": direction / norm if norm > 0 else float("inf"), "layers": len(per_layer)}
