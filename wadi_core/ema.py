"""Exponential moving average of parameters, for the teacher's training and for distillation."""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, params, decay: float):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int | None = None) -> None:
        """Move the average toward the live weights; with ``step`` the decay warms up as
        ``min(decay, (1 + step) / (10 + step))`` so early averages are not stuck at the initial weights."""
        d = self.decay if step is None else min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to undo): sample with the average, train on."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)
