"""Between images and latents: the VAE's encoder and decoder, scaled as the backbone sees them."""

from __future__ import annotations

import numpy as np
import torch

from ..images import to_tensor


class NonFiniteError(ValueError):
    """A model produced NaN or Inf values, which would be written as black images."""


def check_finite_latents(latents: torch.Tensor) -> None:
    if not bool(torch.isfinite(latents).all()):
        bad = int((~torch.isfinite(latents)).sum())
        raise NonFiniteError(f"the model produced NaN or Inf values ({bad:,} of {latents.numel():,} latent values), "
                             "which would be black images, so none were written; lower the adapters' strengths or "
                             "the guidance, or check the adapter and model files")


@torch.no_grad()
def encode(components, images: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` images -> scaled latents: the posterior's mean, or a sample from it with
    ``generator``."""
    vae = components.vae
    posterior = vae.encode(to_tensor(images).to(vae.device, vae.dtype)).latent_dist
    latents = posterior.mean if generator is None else posterior.sample(generator)
    return latents * vae.config.scaling_factor


@torch.no_grad()
def decode(components, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents -> ``uint8 [n, H, W, 3]``; NaN/Inf latents raise :class:`NonFiniteError`."""
    check_finite_latents(latents)
    vae = components.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
