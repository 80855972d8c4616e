"""Multi-step text-to-image sampling with classifier-free guidance (the teacher's sampler).

One loop for every diffusers scheduler we offer, with one seed per image so that a given
(prompt, seed) pair always gives the same picture whatever the batch it is drawn in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..choices import SCHEDULERS
from ..models.vae import decode
from .latents import check_sampling_settings, initial_latents, latent_shape
from .prediction import prediction_type



def make_scheduler(name: str, config):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown sampler '{name}'; choose one of: {', '.join(SCHEDULERS)}")


@torch.no_grad()
def sample(components, prompts: Sequence[str], seeds: Sequence[int] | None = None, steps: int = 25,
           guidance: float = 3.0, sampler: str = "ddim", batch_size: int = 32, progress: bool = True,
           scale: int = 1, init_latents: torch.Tensor | None = None, strength: float = 1.0) -> np.ndarray:
    """Images for ``prompts`` (``uint8 [n, H, W, 3]``), ``steps`` scheduler steps with CFG ``guidance``.

    ``scale`` multiplies the resolution. With ``init_latents`` (image-to-image, DDIM only) the
    latents are noised to ``strength`` of the schedule and only the last ``strength * steps``
    steps run (SDEdit), e.g. to refine an upscaled one-step image.
    """
    latents = sample_latents(components, prompts, seeds, steps, guidance, sampler, batch_size, progress, scale,
                             init_latents, strength)
    return np.concatenate([decode(components, latents[i:i + batch_size]) for i in range(0, len(latents), batch_size)])


def sample_latents(components, prompts: Sequence[str], seeds: Sequence[int] | None = None, steps: int = 25,
                   guidance: float = 3.0, sampler: str = "ddim", batch_size: int = 32, progress: bool = True,
                   scale: int = 1, init_latents: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
    """The final latents of :func:`sample`, before the VAE decoder (same arguments)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to sample; give at least one prompt")
    check_sampling_settings(guidance, batch_size)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    prediction_type(components.scheduler.config)  # eps or v: the scheduler's step reads either
    if init_latents is not None and (sampler != "ddim" or not 0 < strength <= 1):
        raise ValueError("image-to-image refinement needs the ddim sampler and a strength in (0, 1]")
    unet = components.unet
    device, dtype = unet.device, unet.dtype
    shape = latent_shape(components, scale) if init_latents is None else tuple(init_latents.shape[1:])
    out = []
    bar = tqdm(total=len(prompts) * steps, desc=f"sampling ({sampler}, {steps} steps)", unit="step",
               disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        scheduler = make_scheduler(sampler, components.scheduler.config)
        scheduler.set_timesteps(steps)
        cond = components.encode_prompts(chunk).to(device, dtype)
        use_cfg = guidance != 1.0
        if use_cfg:
            cond = torch.cat([components.encode_prompts([""] * len(chunk)).to(device, dtype), cond])
        noise = initial_latents(chunk_seeds, shape).to(device, dtype)
        timesteps = scheduler.timesteps
        if init_latents is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            timesteps = timesteps[len(timesteps) - max(1, round(len(timesteps) * strength)):]
            start_latents = init_latents[start:start + batch_size].to(device, dtype)
            latents = scheduler.add_noise(start_latents, noise, timesteps[:1])
        for t in timesteps:
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            eps = unet(model_in, t, cond).sample
            if use_cfg:
                uncond, text = eps.chunk(2)
                eps = uncond + guidance * (text - uncond)
            latents = scheduler.step(eps, t, latents).prev_sample
            bar.update(len(chunk))
        out.append(latents)
    bar.close()
    return torch.cat(out)
