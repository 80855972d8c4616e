"""The starting point every sampler shares: one noise latent per seed, its shape, the image size, and the
checks of the numbers samplers take."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def initial_latents(seeds: Sequence[int], shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                        for s in seeds])


def image_size(components) -> int:
    """The side in pixels of the images the model draws at its training resolution."""
    return components.unet.config.sample_size * 2 ** (len(components.vae.config.block_out_channels) - 1)


def latent_shape(components, scale: int = 1) -> tuple[int, int, int]:
    """``(channels, side, side)`` of the latents; ``scale`` > 1 draws above the training resolution."""
    size = components.unet.config.sample_size * scale
    return components.unet.config.in_channels, size, size


def check_sampling_settings(guidance: float | None = None, batch_size: int | None = None) -> None:
    """Numbers every sampler takes, checked before any work (NaN passes every comparison, so say it)."""
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"the guidance (CFG scale) must be a finite number of 0 or more (1 = none), not {guidance}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"the batch size must be a whole number of 1 or more, not {batch_size!r}")
