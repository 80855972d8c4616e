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
from .checkpoint import CheckpointError, open_checkpoint

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


def _load(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, path: Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"{path} lacks the {what} weight '{missing[0]}' (and {len(missing) - 1} more); it is not "
                              "a complete SD1.x checkpoint")
    module.load_state_dict({k: tensors[k].reshape(v.shape).to(v.dtype) for k, v in own.items() if k in tensors},
                           strict=False, assign=True)
    left = next((n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta), None)
    if left:  # a tensor no file holds and no initialiser filled (built on the meta device)
        raise CheckpointError(f"{path} lacks the {what} weight '{left}'; it is not a complete SD1.x checkpoint")


def load_single_file_components(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Components (as ``load_components`` returns them) from a single-file SD1.x checkpoint."""
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
    with torch.device("meta"):  # the file holds every UNet and VAE weight: none is initialised only to be replaced
        unet, vae = sd15_unet(), AutoencoderKL(**SD_VAE)
    _load(unet, {name: ckpt.read(name) for name in ckpt.stored}, "UNet", path)
    to_ldm = keys.vae_to_ldm({k: v for k, v in vae.state_dict().items()})  # names only: LDM -> diffusers below
    ldm_to_diffusers = dict(zip((keys.LDM_VAE + k for k in to_ldm), vae.state_dict()))
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        vae_tensors = {ldm_to_diffusers[k]: f.get_tensor(k) for k in names if k in ldm_to_diffusers}
        text_tensors = {k[len(keys.LDM_CLIP):]: f.get_tensor(k) for k in names if k.startswith(keys.LDM_CLIP)}
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):  # transformers >= 5 names
        text_tensors = {k.removeprefix("text_model."): v for k, v in text_tensors.items()}
    _load(vae, vae_tensors, "VAE", path)
    _load(text_encoder, text_tensors, "text encoder", path)
    for module in (text_encoder, vae, unet):
        if dtype != torch.float32:
            module.to(dtype)
        module.eval().requires_grad_(False)
    return Components(tokenizer, text_encoder, vae, unet, DDPMScheduler.from_config(SD_SCHEDULER))
