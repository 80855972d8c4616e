"""ControlNets for a teacher: a new one initialised from its UNet, and loading a trained one. Generation
under control is :class:`wadi_core.sampling.Controlled` around the one-step or the multi-step sampler."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .sampling import Controlled, MultiStep, OneStep
from .sampling.controlnet import ControlNetMismatch, check_fits  # noqa: F401  (part of this module's face)


# The shipped ControlNet of the embedded world: silhouettes (shapes white on black) -> placement.
SHAPES_CONTROLNET = Path(__file__).resolve().parent / "shapes" / "controlnet"


def new_controlnet(components, conditioning_channels: int = 3):
    """A ControlNet initialised from the model's UNet (the ControlNet recipe), its condition encoder
    downsampling by the VAE's factor (8 for SD, 4 for the shapes world) so the hint fits the latents."""
    from diffusers import ControlNetModel

    downsamples = len(components.vae.config.block_out_channels) - 1
    channels = (16, 32, 96, 256, 256)[: downsamples + 1]
    return ControlNetModel.from_unet(components.unet, conditioning_embedding_out_channels=channels,
                                     conditioning_channels=conditioning_channels)


def load_controlnet(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A diffusers ``ControlNetModel`` from its folder (config.json + safetensors)."""
    from diffusers import ControlNetModel

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers ControlNet folder (no config.json); give the folder "
                                "that ControlNetModel.save_pretrained wrote")
    return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype).eval().requires_grad_(False)


def generate(components, controlnet, prompts: Sequence[str], control_images: np.ndarray,
             seeds: Sequence[int] | None = None, steps: int | None = None, guidance: float = 3.0,
             scale: float = 1.0, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Images under ControlNet control: one step from a student (``steps=None``), or ``steps`` DDIM steps with
    CFG ``guidance`` from a multi-step model (the :class:`~wadi_core.sampling.Controlled` sampler)."""
    inner = OneStep() if steps is None else MultiStep(steps=steps, guidance=guidance, batch_size=batch_size)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    return Controlled(controlnet, control_images, inner, scale, batch_size)(components, prompts, seeds, progress)
