"""DMD2's GAN term (Yin et al. 2024, not part of WaDi): a small discriminator head on the fake score model's
middle features, trained to tell noised real latents from noised student latents; the student is pushed
to make its latents look real to it. The fake model's own features serve as the discriminator backbone,
so the only new weights are the head's.

The non-saturating losses: the head minimises ``softplus(-D(real)) + softplus(D(fake))``, the student
``softplus(-D(fake))``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


FEATURES = ("mid", "last")


def reads_tokens(model: nn.Module) -> bool:
    """Whether the head reads a DiT's tokens ``[n, tokens, C]`` rather than a UNet's feature maps ``[n, C, h, w]``."""
    return getattr(model, "mid_block", None) is None


def feature_module(model: nn.Module, where: str = "mid") -> nn.Module:
    """The block whose output the head reads. ``mid``: a UNet's mid block (its lowest resolution, DMD2's
    choice) or the middle transformer block of a DiT; ``last``: the last up block of a UNet (the full latent
    resolution, where a small latent keeps its fine detail) or the last transformer block of a DiT."""
    if where not in FEATURES:
        raise ValueError(f"unknown GAN feature place '{where}'; choose one of: {', '.join(FEATURES)}")
    if not reads_tokens(model):
        return model.mid_block if where == "mid" else model.up_blocks[-1]
    blocks = getattr(model, "transformer_blocks", None)
    if blocks:
        return blocks[len(blocks) // 2] if where == "mid" else blocks[-1]
    raise ValueError(f"{type(model).__name__} has neither a mid_block nor transformer_blocks; the GAN term needs "
                     "one of them (turn it off with --gan-weight 0)")


def feature_channels(model: nn.Module, where: str = "mid") -> int:
    """Channels of :func:`feature_module`'s output."""
    if not reads_tokens(model):
        return model.config.block_out_channels[-1 if where == "mid" else 0]
    return model.transformer_blocks[0].norm1.normalized_shape[0]


class FeatureTap:
    """Keeps the latest output of :func:`feature_module` while :meth:`capture` is active."""

    def __init__(self, model: nn.Module, where: str = "mid"):
        self.features: torch.Tensor | None = None
        self._active = False
        feature_module(model, where).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._active:
            self.features = output[0] if isinstance(output, tuple) else output

    @contextlib.contextmanager
    def capture(self):
        self._active, self.features = True, None
        try:
            yield self
        finally:
            self._active = False


class DiscriminatorHead(nn.Module):
    """Features -> one logit per sample: a patch classifier of UNet features ``[n, C, h, w]`` or, with ``tokens``, a
    token classifier of DiT features ``[n, tokens, C]``, averaged over patches or tokens. It holds only the one it
    uses: DDP refuses a network with weights that no loss reaches."""

    def __init__(self, channels: int, tokens: bool = False):
        super().__init__()
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        if tokens:
            self.tokens = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels), nn.SiLU(),
                                        nn.Linear(channels, 1))
        else:
            self.conv = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels),
                                      nn.SiLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.tokens(features.float()) if hasattr(self, "tokens") else self.conv(features.float())
        return logits.flatten(1).mean(1)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


@contextlib.contextmanager
def frozen(params):
    """Parameters that take no gradient inside the block (the student's GAN pass through the fake model)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
