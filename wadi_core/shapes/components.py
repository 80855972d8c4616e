"""The embedded default model: Stable Diffusion's architecture at the size of the shapes world.

Same classes and folder layout as a real SD checkpoint (CLIPTokenizer, CLIPTextModel,
AutoencoderKL, UNet2DConditionModel, SD's scaled-linear 1000-step schedule), so every command
runs the same code on it as on SD. The tokenizer's files are generated here, not downloaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..choices import EMBEDDED_MODEL
from ..models.components import Components, save_sd_folder
from .world import IMAGE_SIZE, vocabulary

MODEL_DIR = EMBEDDED_MODEL
FAMILY = "shapes"
MAX_TOKENS = 16  # BOS + the longest caption (9 words) + EOS, padded
LATENT_SIZE = IMAGE_SIZE // 4
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789<>-'.,!?"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _learned_merges() -> tuple[list[str], list[str]]:
    """BPE merges learned on the world's words: repeatedly merge the most frequent adjacent pair
    (ties broken alphabetically, so every run gives the same ids) until each word is one token.

    Learned merges, unlike hand-built per-word chains, cannot interfere across words: an early
    `r i` from "right" would otherwise split "triangle"."""
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in vocabulary()]
    merges: list[str] = []
    while any(len(w) > 1 for w in words):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(" ".join(best))
        for k, w in enumerate(words):
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    merged.append(w[i] + w[i + 1])
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[k] = merged
    return [m.replace(" ", "") for m in merges], merges


def _world_vocab() -> tuple[dict[str, int], list[str]]:
    """``({token: id}, merges)`` of the world's tokenizer; BOS and EOS take the last two ids."""
    tokens, merges = _learned_merges()
    vocab: dict[str, int] = {}
    for token in [*_CHARS, *(c + "</w>" for c in _CHARS), *tokens, BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def write_tokenizer(folder: str | os.PathLike, config: bool = True) -> Path:
    """CLIP BPE files whose vocabulary makes every word of the world a single token.

    Other words fall back to characters, which keeps new tokens (textual inversion,
    ReVersion's ``<R>``) possible through ``tokenizer.add_tokens``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _world_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    if not config:
        return folder
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "bos_token": BOS,
        "eos_token": EOS, "pad_token": EOS, "unk_token": EOS, "do_lower_case": True}, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=1))
    return folder


def text_encoder_config(vocab_size: int):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=32, sample_size=IMAGE_SIZE)
UNET_CONFIG = dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=(64, 96, 128), down_block_types=("CrossAttnDownBlock2D",) * 3,
                   up_block_types=("CrossAttnUpBlock2D",) * 3, cross_attention_dim=64, attention_head_dim=8,
                   norm_num_groups=32)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def new_components(seed: int = 0, tokenizer_dir: str | os.PathLike | None = None) -> Components:
    """Freshly initialised components (for training the teacher from scratch)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir else write_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer)))
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    return Components(tokenizer, text_encoder, vae, unet, DDPMScheduler.from_config(SCHEDULER_CONFIG))


def save_model_folder(c: Components, folder: str | os.PathLike, unet_dtype: torch.dtype = torch.float16) -> Path:
    """Write the components as a diffusers ``StableDiffusionPipeline`` folder; with the world's own tokenizer
    its BPE files too, as SD folders have them."""
    folder = save_sd_folder(c, folder, unet_dtype)
    if len(c.tokenizer) == len(_world_vocab()[0]):
        write_tokenizer(folder / "tokenizer", config=False)
    return folder
