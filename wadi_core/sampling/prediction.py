"""What a backbone's output means: from its eps prediction at ``x_t`` to the clean latent ``x0``."""

from __future__ import annotations

import torch


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample, shaped to broadcast over ``like``'s other dimensions."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` with one ``abar`` per sample."""
    a = per_sample(abar_t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()
