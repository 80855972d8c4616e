"""The parts of a text-to-image diffusion model, and the diffusers SD folder they load from and save to.

:class:`Components` holds tokenizer, text encoder, VAE, backbone (UNet or DiT) and noise schedule, the
same five parts for the embedded shapes model, any SD1.x/2.x folder, a single-file checkpoint and a
PixArt-style DiT (``wadi_core.models.loading`` picks the reader).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import WEIGHTS, read_model_folder, weights_file

DIT_FOLDER = "transformer"


def is_dit_folder(folder: str | os.PathLike) -> bool:
    """A PixArt-style folder: a ``transformer/`` where an SD folder has its ``unet/``."""
    return (Path(folder) / DIT_FOLDER / "config.json").is_file()


def is_sdxl_folder(folder: str | os.PathLike) -> bool:
    """A diffusers SDXL pipeline folder: a second text encoder next to the first."""
    return (Path(folder) / "text_encoder_2").is_dir()


class ModelFolderError(ValueError):
    """A model folder with a missing or unreadable part; the message names the file."""


@dataclass
class Components:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``[n, tokens, hidden]`` text embeddings, as SD pipelines compute them."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    def to(self, device) -> "Components":
        """Move text encoder, VAE and backbone (with any adapters on it) to ``device``, in place."""
        for module in (self.text_encoder, self.vae, self.unet):
            module.to(device)
        return self


REQUIRED_FILES = ("model_index.json", "text_encoder/config.json",
                  "text_encoder/model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                  "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json")


def holds(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds ``name`` (a path in it); weights count in a variant (``model.fp16.safetensors``) or
    sharded too."""
    if name.endswith(".safetensors"):
        return weights_file(folder / Path(name).parent, Path(name).name) is not None
    return (folder / name).exists()


def check_model_folder(folder: str | os.PathLike, backbone: bool = False) -> Path:
    """``folder`` when it is a complete SD pipeline folder, else one error naming what is missing. With ``backbone``
    (a replacement UNet file is given) the UNet's weights need not be there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist")
    for name in REQUIRED_FILES:
        if not (backbone and name.startswith("unet/") and name.endswith(".safetensors")) and not holds(folder, name):
            raise ModelFolderError(f"model folder {folder} is incomplete: {folder / name} is missing")
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "vocab.json").is_file():
        raise ModelFolderError(f"model folder {folder} is incomplete: {tokenizer / 'vocab.json'} (or tokenizer.json) "
                               "is missing")
    return folder


def read_part(cls, folder: Path, dtype: torch.dtype):
    """A part of a pipeline folder (a text encoder, a VAE) by ``cls.from_pretrained``, its weights in the variant the
    folder holds them in (``model.safetensors``, else ``model.fp16.safetensors`` as a download with
    ``variant="fp16"`` leaves them)."""
    weights = "model.safetensors" if cls.__module__.startswith("transformers") else f"{WEIGHTS}.safetensors"
    found = weights_file(folder, weights)
    return cls.from_pretrained(str(folder), torch_dtype=dtype, variant=found[1] if found else None)


def load_sd_folder(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   unet_dtype: torch.dtype | None = None, backbone: str | os.PathLike | None = None) -> Components:
    """A diffusers ``StableDiffusionPipeline`` folder (the embedded default or a real SD1.x/2.x model); SDXL folders
    are read by :func:`wadi_core.models.sdxl.load_sdxl_folder`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = check_model_folder(folder, backbone=bool(backbone))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    text_encoder = read_part(CLIPTextModel, folder / "text_encoder", dtype)
    vae = read_part(AutoencoderKL, folder / "vae", dtype)
    unet = read_model_folder(UNet2DConditionModel, folder / "unet", unet_dtype or dtype, backbone)
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    for module in (text_encoder, vae, unet):
        module.eval().requires_grad_(False)
    return Components(tokenizer, text_encoder, vae, unet, scheduler)


def save_sd_folder(c: Components, folder: str | os.PathLike, unet_dtype: torch.dtype = torch.float16) -> Path:
    """Write the components as a diffusers ``StableDiffusionPipeline`` folder (the UNet in ``unet_dtype``;
    loading upcasts it)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c.tokenizer.save_pretrained(folder / "tokenizer")
    c.text_encoder.save_pretrained(folder / "text_encoder")
    c.vae.save_pretrained(folder / "vae")
    c.unet.save_config(folder / "unet")
    save_file({k: v.to(unet_dtype).contiguous() for k, v in c.unet.state_dict().items()},
              str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    c.scheduler.save_pretrained(folder / "scheduler")
    write_model_index(folder, sdxl=False, scheduler=type(c.scheduler).__name__)
    return folder


def write_model_index(folder: Path, sdxl: bool, scheduler: str) -> None:
    """The ``model_index.json`` by which diffusers' ``DiffusionPipeline.from_pretrained`` knows the folder's parts:
    ``StableDiffusionPipeline`` (without the safety checker) or ``StableDiffusionXLPipeline``."""
    import diffusers

    index = {"_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
             "_diffusers_version": diffusers.__version__, "feature_extractor": [None, None],
             "image_encoder": [None, None], "scheduler": ["diffusers", scheduler],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
