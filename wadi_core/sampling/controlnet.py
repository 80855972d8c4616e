"""ControlNet inside any sampler: :class:`ControlledUNet` adds a diffusers ``ControlNetModel``'s residuals to
every backbone call, so the one-step and the multi-step samplers run unchanged and see the same control.
Any ControlNet trained for the teacher works with its student, which only turned the teacher's weight rows.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ControlNetMismatch(ValueError):
    """A ControlNet made for another base model than the one it is used with."""


def check_fits(controlnet, unet) -> None:
    """Refuse a ControlNet whose shapes differ from the UNet's (made for another base)."""
    if unet.config.get("addition_embed_type") == "text_time":
        raise ControlNetMismatch("wadi's ControlNet sampler takes SD1.x / SD2.x models and the embedded one; SDXL "
                                 "ControlNets need SDXL's added conditions, which it does not pass yet")
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
    a CFG-doubled batch), scaled by ``scale``. The ControlNet is moved to the UNet's device and type (in place, as
    a diffusers pipeline's ``.to`` moves it), so it runs wherever the model was put."""

    def __init__(self, unet, controlnet, control: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.unet, self.controlnet, self.scale = unet, controlnet.to(unet.device, unet.dtype), scale
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
