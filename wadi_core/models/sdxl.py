"""SDXL teachers, behind the calling convention of SD's UNet.

Everything in wadi (samplers, one-step prediction, the Distiller, DreamBooth) calls
``model(sample, timestep, text).sample`` with ``text = components.encode_prompts(prompts)``, and
moves, stacks, concatenates (classifier-free guidance) and slices that one text tensor. SDXL's UNet
wants more: the pooled text embedding of its second text encoder and six "time ids" (original size,
crop corner, target size). So that these travel everywhere the text goes, SDXL's text is one packed
tensor ``[n, tokens + 1, 2048]``:

- rows ``0 .. tokens-1``: both encoders' penultimate hidden states side by side (768 + 1280 wide),
  as diffusers' SDXL pipeline computes them;
- the last row: the pooled embedding (1280 values), zero-padded to the row's width.

:class:`SDXLUNet2DConditionModel` unpacks it and builds the time ids from the latent size (image = latent x
the VAE's factor, 8 for SDXL; no crop), as the pipeline does at its default size. Being a subclass of diffusers'
UNet, adapters, presets and the diffusers / LDM key names are those of the plain model.
"""

from __future__ import annotations

import json
import os

import torch
from diffusers import UNet2DConditionModel

from .checkpoint import read_model_folder
from .components import (
    Components,
    ModelFolderError,
    check_model_folder,
    holds,
    read_part,
)


def pooled_width(config) -> int:
    """Width of the pooled text embedding the UNet's added conditions take (1280 for SDXL)."""
    return config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim


def pack(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``[n, tokens, width]`` hidden states and ``[n, p]`` pooled embeddings -> ``[n, tokens + 1, width]``."""
    if pooled.shape[-1] > hidden.shape[-1]:
        raise ValueError(f"the pooled embedding ({pooled.shape[-1]} values) is wider than the text features "
                         f"({hidden.shape[-1]}); this is not an SDXL-shaped model")
    row = torch.nn.functional.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1]))
    return torch.cat([hidden, row[:, None].to(hidden.dtype)], dim=1)


def unpack(text: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: ``(hidden states, pooled embedding)``."""
    return text[:, :-1], text[:, -1, :width]


def time_ids(sample: torch.Tensor, vae_scale_factor: int) -> torch.Tensor:
    """``[n, 6]``: original size, crop top-left (0, 0) and target size, all the image size of ``sample``."""
    h, w = (side * vae_scale_factor for side in sample.shape[-2:])
    ids = torch.tensor([h, w, 0, 0, h, w], dtype=sample.dtype, device=sample.device)
    return ids.expand(sample.shape[0], 6)


class SDXLUNet2DConditionModel(UNet2DConditionModel):
    vae_scale_factor = 8  # pixels per latent (SDXL's VAE); the loader sets the folder's own

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, *args, **kwargs):
        if "added_cond_kwargs" in kwargs:  # a caller that knows SDXL's conditions (diffusers' pipelines)
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        hidden, pooled = unpack(encoder_hidden_states, pooled_width(self.config))
        conditions = {"text_embeds": pooled, "time_ids": time_ids(sample, self.vae_scale_factor)}
        return super().forward(sample, timestep, hidden, *args, added_cond_kwargs=conditions, **kwargs)


class SDXLTextEncoders(torch.nn.Module):
    """SDXL's two CLIP text encoders as one module (moved, cast and frozen together)."""

    def __init__(self, one: torch.nn.Module, two: torch.nn.Module):
        super().__init__()
        self.one, self.two = one, two

    @property
    def device(self) -> torch.device:
        return self.one.device

    def get_input_embeddings(self):
        raise ModelFolderError("new tokens (ReVersion, textual inversion) are learned for SD1.x / SD2.x text "
                               "encoders; SDXL has two, which wadi does not train tokens for")

    def forward(self, ids: torch.Tensor, ids_2: torch.Tensor) -> torch.Tensor:
        first = self.one(ids, output_hidden_states=True)
        second = self.two(ids_2, output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return pack(hidden, second.text_embeds)


class SDXLComponents(Components):
    """Components whose ``text_encoder`` is :class:`SDXLTextEncoders` and whose prompts are tokenized twice."""

    def __init__(self, tokenizer, tokenizer_2, text_encoder: SDXLTextEncoders, vae, unet, scheduler):
        super().__init__(tokenizer, text_encoder, vae, unet, scheduler)
        self.tokenizer_2 = tokenizer_2

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The packed ``[n, tokens + 1, width]`` text of SDXL (see the module's docstring)."""
        ids = [t(prompts, padding="max_length", max_length=t.model_max_length, truncation=True,
                 return_tensors="pt").input_ids.to(self.text_encoder.device) for t in (self.tokenizer, self.tokenizer_2)]
        return self.text_encoder(*ids)


def load_sdxl_folder(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                     unet_dtype: torch.dtype | None = None, backbone: str | os.PathLike | None = None
                     ) -> SDXLComponents:
    """A diffusers ``StableDiffusionXLPipeline`` folder (SDXL base, or any model of its layout)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = check_model_folder(folder, backbone=bool(backbone))
    for name in ("text_encoder_2/config.json", "text_encoder_2/model.safetensors", "tokenizer_2"):
        if not holds(folder, name):
            raise ModelFolderError(f"SDXL folder {folder} is incomplete: {folder / name} is missing")
    config = json.loads((folder / "unet" / "config.json").read_text())
    if config.get("addition_embed_type") != "text_time":
        raise ModelFolderError(f"{folder} has two text encoders but its UNet takes no pooled text embedding and time "
                               "ids (addition_embed_type is not 'text_time'); it is not an SDXL model")
    text_encoder = SDXLTextEncoders(
        read_part(CLIPTextModel, folder / "text_encoder", dtype),
        read_part(CLIPTextModelWithProjection, folder / "text_encoder_2", dtype))
    vae = read_part(AutoencoderKL, folder / "vae", dtype)
    unet = read_model_folder(SDXLUNet2DConditionModel, folder / "unet", unet_dtype or dtype, backbone)
    unet.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # as diffusers' SDXL pipeline computes it
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    for module in (text_encoder, vae, unet):
        module.eval().requires_grad_(False)
    return SDXLComponents(CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
                          CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")), text_encoder, vae, unet, scheduler)
