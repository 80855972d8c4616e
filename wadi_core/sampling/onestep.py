"""One-step generation: one UNet call at t = T-1 on pure noise, then the x0 formula and the VAE.

``x0 = (z - sqrt(1 - abar_T) * eps) / sqrt(abar_T)`` for an eps-prediction model and
``x0 = sqrt(abar_T) z - sqrt(1 - abar_T) * v`` for a v-prediction one, with the scheduler's own ``abar_T``
(for SD's schedule abar_999 = 0.0047). No classifier-free guidance: the student was distilled
with the teacher's guidance baked in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.vae import decode
from .latents import check_sampling_settings, initial_latents, latent_shape
from .prediction import prediction_type, x0_from_output


# The AUTOMATIC1111 / Forge settings whose k-diffusion path computes this same x0 (tests/test_sdwebui_onestep.py
# follows the hosts' formulas): one Euler step from sigma(999) with the noise scaled by sqrt(1 + sigma^2).
A1111_ONE_STEP = (
    ("Sampling method", "Euler"),
    ("Sampling steps", "1"),
    ("Schedule type", "Automatic (Uniform, Karras, Simple, SGM Uniform, Exponential: all the same at one step)"),
    ("CFG Scale", "1"),
    ("Settings > Sampler parameters > SGM noise multiplier", "on (off scales the noise by sigma, not "
                                                              "sqrt(1 + sigma^2): 0.23% too weak)"),
    ("Prompt", "<lora:NAME:1> with the student's file in models/Lora, on the checkpoint it was distilled from"),
)


def final_timestep(scheduler) -> int:
    return scheduler.config.num_train_timesteps - 1


def predict_x0(unet, scheduler, noise: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """The student's one-step latent ``x0`` from ``noise`` (differentiable, for training too)."""
    t = final_timestep(scheduler)
    timesteps = torch.full((noise.shape[0],), t, device=noise.device, dtype=torch.long)
    output = unet(noise, timesteps, text_embeddings).sample
    abar = scheduler.alphas_cumprod[t].expand(noise.shape[0])
    return x0_from_output(output, noise, abar, prediction_type(scheduler.config))


@torch.no_grad()
def generate(components, prompts: Sequence[str], seeds: Sequence[int] | None = None, batch_size: int = 64,
             progress: bool = True, scale: int = 1) -> np.ndarray:
    """One-step images (``uint8 [n, H, W, 3]``) from a student UNet: with LoRaD adapters attached,
    merged, or any one-step UNet; ``scale`` > 1 draws above the training resolution."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to generate; give at least one prompt")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    prediction_type(components.scheduler.config)
    check_sampling_settings(batch_size=batch_size)
    unet = components.unet
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="one-step", disable=not progress):
        chunk = prompts[start:start + batch_size]
        noise = initial_latents(seeds[start:start + batch_size], latent_shape(components, scale)).to(unet.device,
                                                                                                   unet.dtype)
        text = components.encode_prompts(chunk).to(unet.device, unet.dtype)
        out.append(decode(components, predict_x0(unet, components.scheduler, noise, text)))
    return np.concatenate(out)
