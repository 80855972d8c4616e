"""PixArt-style DiT teachers, behind the calling convention of SD's UNet.

The samplers, one-step prediction and the Distiller call ``model(sample, timestep, text).sample``
and read ``model.config.sample_size / in_channels``. :class:`EpsPixArtTransformer2DModel` is
diffusers' ``PixArtTransformer2DModel`` with that call: it passes the size conditions PixArt-alpha
wants and returns the eps half of the output (PixArt also predicts the variance). Being a
subclass, adapters, presets (``dit-student`` / ``dit-fake``) and ``lora_transformer`` keys work on
it as on the plain model. The T5 attention mask is not passed (the text embeddings travel without
it, as for SD), so padded tokens are attended to; PixArt's own pipeline masks them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .checkpoint import load_backbone
from .components import DIT_FOLDER, Components, ModelFolderError, read_part

class EpsPixArtTransformer2DModel(PixArtTransformer2DModel):
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                return_dict: bool = True, **kwargs):
        if kwargs:
            return super().forward(sample, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                                   return_dict=return_dict, **kwargs)
        n = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(n)
        conditions = {"resolution": None, "aspect_ratio": None}
        if self.config.use_additional_conditions:  # PixArt-alpha 1024: image size and aspect ratio, per sample
            side = float(sample.shape[-1] * 8)
            conditions = {"resolution": torch.tensor([[side, side]], device=sample.device).expand(n, 2),
                          "aspect_ratio": torch.ones(n, 1, device=sample.device)}
        out = super().forward(sample, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                              added_cond_kwargs=conditions, return_dict=False)[0]
        channels = self.config.in_channels
        eps = out[:, :channels] if out.shape[1] == 2 * channels else out
        return Transformer2DModelOutput(sample=eps) if return_dict else (eps,)


def load_dit_components(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        unet_dtype: torch.dtype | None = None, backbone: str | os.PathLike | None = None):
    """A diffusers PixArt folder (transformer/, text_encoder/ (T5), tokenizer/, vae/, scheduler/) as
    :class:`~wadi_core.shapes.components.Components`."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import AutoTokenizer, T5EncoderModel


    folder = Path(folder)
    for part in ("tokenizer", "text_encoder", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelFolderError(f"DiT folder {folder} is incomplete: {folder / part} is missing")
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = read_part(T5EncoderModel, folder / "text_encoder", dtype)
    vae = read_part(AutoencoderKL, folder / "vae", dtype)
    if backbone:  # built from its configuration (its position table is not in a file), then the file's weights
        config = EpsPixArtTransformer2DModel.load_config(str(folder / DIT_FOLDER))
        transformer = EpsPixArtTransformer2DModel.from_config(config).to(unet_dtype or dtype)
        load_backbone(transformer, backbone, f"the {type(transformer).__name__} of {folder}")
    else:
        transformer = read_part(EpsPixArtTransformer2DModel, folder / DIT_FOLDER, unet_dtype or dtype)
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    for module in (text_encoder, vae, transformer):
        module.eval().requires_grad_(False)
    return Components(tokenizer, text_encoder, vae, transformer, scheduler)
