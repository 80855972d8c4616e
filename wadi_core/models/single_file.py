"""A single-file SD1.x checkpoint (the ``.safetensors`` ComfyUI and A1111 load) as model components.

UNet, VAE and CLIP text encoder are read from the original LDM key layout into diffusers models
with SD1.x's fixed configurations, without downloading anything. The tokenizer is not in such a
file: it is taken from a ``tokenizer/`` folder next to the checkpoint, else from the Hugging Face
cache (``openai/clip-vit-large-patch14``); without either the error names both fixes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from . import keys
from .families import sd15_unet
from .checkpoint import CheckpointError, StoredTensors, load_weights, open_checkpoint

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu")
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
CLIP_REPO = "openai/clip-vit-large-patch14"


def find_tokenizer(checkpoint: Path):
    from transformers import CLIPTokenizer

    beside = checkpoint.parent / "tokenizer"
    if beside.is_dir():
        return CLIPTokenizer.from_pretrained(str(beside))
    try:
        tokenizer = CLIPTokenizer.from_pretrained(CLIP_REPO, local_files_only=True)
    except OSError:
        tokenizer = None
    if tokenizer is None or len(tokenizer) < 1000:  # transformers 5 returns an empty tokenizer for a missing repo
        raise CheckpointError(f"{checkpoint} has no tokenizer (single files never do): put SD1.5's tokenizer folder "
                              f"(from any diffusers SD1.5 copy) at {beside}, or have {CLIP_REPO} in the Hugging Face "
                              "cache")
    return tokenizer


def fill_position_ids(model: torch.nn.Module) -> None:
    """CLIP's position ids (0, 1, ..., n - 1) in a text encoder built on the meta device: transformers does not
    save them, so a file need not hold them."""
    for name, buffer in list(model.named_buffers()):
        if name.endswith("position_ids") and buffer.is_meta:
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, torch.arange(buffer.shape[-1]).expand(buffer.shape))


def load_single_file_components(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                                unet_dtype: torch.dtype | None = None):
    """Components (as ``load_components`` returns them) from a single-file SD1.x checkpoint; the UNet in
    ``unet_dtype`` (default: ``dtype``)."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    from .components import Components

    path = Path(path).expanduser()
    ckpt = open_checkpoint(path)
    if ckpt.family != "sd15":
        raise CheckpointError(f"{path} is a '{ckpt.family}' checkpoint; single-file teachers are read for SD1.x only. "
                              "Use a diffusers folder of it (diffusers' from_single_file, then save_pretrained)")
    tokenizer = find_tokenizer(path)
    with torch.device("meta"):  # the file holds every weight: none is initialised only to be replaced
        unet, vae = sd15_unet(), AutoencoderKL(**SD_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    fill_position_ids(text_encoder)
    to_ldm = keys.vae_to_ldm({k: v for k, v in vae.state_dict().items()})  # names only: LDM -> diffusers below
    ldm_to_diffusers = dict(zip((keys.LDM_VAE + k for k in to_ldm), vae.state_dict()))
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
    vae_tensors = {ldm_to_diffusers[k]: (path, k) for k in names if k in ldm_to_diffusers}
    text_tensors = {k[len(keys.LDM_CLIP):]: (path, k) for k in names if k.startswith(keys.LDM_CLIP)}
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers >= 5 names
        text_tensors = {k.removeprefix("text_model."): v for k, v in text_tensors.items()}
    # each tensor read and cast on its own, the small parts first: the UNet never has the whole file beside it
    incomplete = f"{path} is not a complete SD1.x checkpoint"
    load_weights(text_encoder, StoredTensors(text_tensors), "text encoder", incomplete, dtype)
    load_weights(vae, StoredTensors(vae_tensors), "VAE", incomplete, dtype)
    load_weights(unet, ckpt.tensors(), "UNet", incomplete, unet_dtype or dtype)
    for module in (text_encoder, vae, unet):
        module.eval().requires_grad_(False)
    return Components(tokenizer, text_encoder, vae, unet, DDPMScheduler.from_config(SD_SCHEDULER))
