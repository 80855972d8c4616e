"""ControlNet with the one-step student and with the multi-step teacher.

A :class:`ControlledUNet` adds a diffusers ``ControlNetModel``'s residuals to every UNet call, so
the ordinary samplers (``onestep.generate`` and ``sampling.sample``) run unchanged: the student's
one step at t=999 and the teacher's DDIM steps see the same control. Any ControlNet trained for the
teacher works with the student, since the student only turned the teacher's weight rows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import onestep
from .sampling import image_size, sample


# The shipped ControlNet of the embedded world: silhouettes (shapes white on black) -> placement.
SHAPES_CONTROLNET = Path(__file__).resolve().parent / "shapes" / "controlnet"


class ControlNetMismatch(ValueError):
    """A ControlNet made for another base model than the one it is used with."""


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


def check_fits(controlnet, unet) -> None:
    """Refuse a ControlNet whose shapes differ from the UNet's (made for another base)."""
    for key in ("block_out_channels", "cross_attention_dim", "in_channels", "layers_per_block"):
        theirs, ours = controlnet.config.get(key), unet.config.get(key)
        if theirs is not None and ours is not None and list(np.atleast_1d(theirs)) != list(np.atleast_1d(ours)):
            raise ControlNetMismatch(f"the ControlNet has {key}={theirs} but the model's UNet has {ours}; "
                                     "use a ControlNet trained for this base model")


def control_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` control images -> ``float [n, 3, size, size]`` in [0, 1], as ControlNets take them."""
    from PIL import Image
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"control images must be uint8 [n, H, W, 3]; got shape {images.shape}")
    resized = [np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)) for img in images]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0


class ControlledUNet(nn.Module):
    """``unet`` with ``controlnet``'s residuals for ``control`` (one image per batch row, repeated to fit
    a CFG-doubled batch), scaled by ``scale``."""

    def __init__(self, unet, controlnet, control: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet, self.scale = unet, controlnet, scale
        self.control = control.to(unet.device, unet.dtype)

    @property
    def config(self):
        return self.unet.config

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        control = self.control
        if sample.shape[0] != control.shape[0]:
            control = control.repeat(sample.shape[0] // control.shape[0], 1, 1, 1)
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=control, conditioning_scale=self.scale, return_dict=False)
        return self.unet(sample, timestep, encoder_hidden_states, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, **kwargs)


def generate(components, controlnet, prompts: Sequence[str], control_images: np.ndarray,
             seeds: Sequence[int] | None = None, steps: int | None = None, guidance: float = 3.0,
             scale: float = 1.0, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Images under ControlNet control: one step from a student (``steps=None``), or ``steps`` DDIM
    steps with CFG ``guidance`` from a multi-step model."""
    prompts = list(prompts)
    if len(control_images) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(control_images)} control images; give one per prompt")
    check_fits(controlnet, components.unet)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    control = control_tensor(np.asarray(control_images), image_size(components))
    out = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        controlled = dataclasses.replace(components, unet=ControlledUNet(components.unet, controlnet,
                                                                         control[start:stop], scale))
        if steps is None:
            out.append(onestep.generate(controlled, prompts[start:stop], seeds[start:stop], batch_size, progress))
        else:
            out.append(sample(controlled, prompts[start:stop], seeds[start:stop], steps, guidance,
                              batch_size=batch_size, progress=progress))
    return np.concatenate(out)
