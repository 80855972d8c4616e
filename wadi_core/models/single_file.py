"""A single-file checkpoint (the ``.safetensors`` ComfyUI and A1111 load) of SD1.x, SD2.x or SDXL as model components.

UNet, VAE and text encoders are read from the original LDM key layout into diffusers models with the family's fixed
configuration, without downloading anything: SD1.x's CLIP ViT-L; SD2.x's OpenCLIP ViT-H in 23 of its 24 layers (SD2
reads the 23rd layer's output, and diffusers' SD2 text encoder holds just those); SDXL's CLIP ViT-L and OpenCLIP
ViT-bigG. The tokenizer is not in such a file: it is taken from a ``tokenizer/`` folder next to the checkpoint, else
from a host's copy (:func:`add_tokenizer_folder`; ComfyUI's), else CLIP's own (``openai/clip-vit-large-patch14``'s
tokenizer files, a few MB, from the Hugging Face cache or downloaded into it); without any the error names the fixes.
All three families tokenize with CLIP's vocabulary; OpenCLIP's encoders pad with "!" where CLIP pads with its end
token, and each tokenizer is given its encoder's padding here.

Nor does a file say whether its UNet predicts the noise (epsilon) or the velocity (v); as A1111 and ComfyUI do, it is
read from a ``.yaml`` of the same name beside the file (A1111's convention, ``parameterization: "v"``), else from a
``v_pred`` tensor in the file (ComfyUI's), else, for SD2.x, from the spread of the last block's first layer-norm bias
(ComfyUI's test: above 0.09 in the v-prediction SD2 models). An SD2.x v-prediction model draws at 768 px, an epsilon
one at 512 px, as the two SD2.1 releases do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub, keys
from .families import SD15_UNET, SD21_UNET, SDXL_UNET
from .checkpoint import (WEIGHTS, Checkpoint, CheckpointError, StoredTensors, load_weights, open_checkpoint,
                         read_tensor)

SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu")
OPENCLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                  num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
CLIP_REPO = "openai/clip-vit-large-patch14"
END_TOKEN = "<|endoftext|>"
V_PREDICTION_BIAS = keys.LDM_UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
# CLIP tokenizer folders a host ships (ComfyUI's comfy/sd1_tokenizer), tried after a tokenizer/ beside the file
TOKENIZER_FOLDERS: list[Path] = []


def add_tokenizer_folder(folder: str | os.PathLike) -> None:
    """Let single files use the CLIP vocabulary in ``folder`` (a host's own copy) when none is beside them."""
    folder = Path(folder)
    if folder.is_dir() and folder not in TOKENIZER_FOLDERS:
        TOKENIZER_FOLDERS.append(folder)


@dataclass(frozen=True)
class TextPart:
    """One text encoder of a single file: where its tensors are, its configuration and its tokenizer's padding."""

    prefix: str
    config: dict
    openclip: bool  # OpenCLIP's names (q, k, v fused), else Hugging Face's under ``text_model.``
    pad_token: str
    projection: bool = False  # a CLIPTextModelWithProjection (SDXL's second encoder gives the pooled embedding)


@dataclass(frozen=True)
class Family:
    """How a family's single file becomes components."""

    label: str
    unet: dict
    texts: tuple[TextPart, ...]
    vae_scaling: float = 0.18215
    v_sample_size: int | None = None  # the UNet's latent size for v-prediction, where it differs
    guess_v: bool = False  # whether the layer-norm test tells v-prediction (SD2.x)


FAMILIES = {
    "sd15": Family("SD1.x", SD15_UNET, (TextPart(keys.LDM_CLIP, CLIP_L, False, END_TOKEN),)),
    "sd21": Family("SD2.x", {**SD21_UNET, "sample_size": 64}, (TextPart(keys.LDM_SD2_CLIP, OPENCLIP_H, True, "!"),),
                   v_sample_size=96, guess_v=True),
    "sdxl": Family("SDXL", SDXL_UNET, (TextPart(keys.LDM_SDXL_CLIP_L, CLIP_L, False, END_TOKEN),
                                       TextPart(keys.LDM_SDXL_CLIP_G, OPENCLIP_BIGG, True, "!", projection=True)),
                   vae_scaling=0.13025),
}


def find_tokenizer(checkpoint: Path, pad_token: str = END_TOKEN, length: int = 77):
    """CLIP's tokenizer for a single file, padding with ``pad_token`` to ``length`` tokens (the text encoder's, not
    the folder's own setting: ComfyUI's copy of CLIP's vocabulary, for one, says 8192)."""
    from transformers import CLIPTokenizer

    beside = checkpoint.parent / "tokenizer"
    folder = next((f for f in (beside, *TOKENIZER_FOLDERS) if f.is_dir()), None)
    if folder is None:
        try:
            folder = hub.tokenizer_folder(CLIP_REPO)
        except hub.HubError as err:
            raise CheckpointError(f"{checkpoint} has no tokenizer (single files never do), and CLIP's ({CLIP_REPO}) "
                                  f"is neither in the Hugging Face cache nor could it be fetched "
                                  f"({hub.reason(err.__cause__ or err)}): put a CLIP tokenizer folder (the "
                                  f"tokenizer/ of any diffusers SD1.x, SD2.x or SDXL copy) at {beside}, or run once "
                                  "where the Hugging Face Hub can be reached (a few MB)") from err
    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=length)


def fill_position_ids(model: torch.nn.Module) -> None:
    """CLIP's position ids (0, 1, ..., n - 1) in a text encoder built on the meta device: transformers does not
    save them, so a file need not hold them."""
    for name, buffer in list(model.named_buffers()):
        if name.endswith("position_ids") and buffer.is_meta:
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, torch.arange(buffer.shape[-1]).expand(buffer.shape))


def prediction_of(path: Path, names: set[str], family: Family) -> str:
    """``"epsilon"`` or ``"v_prediction"`` for the single file at ``path`` (see the module's docstring)."""
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        v = re.search(r"^\s*parameterization:\s*['\"]?v['\"]?\s*(#.*)?$", yaml.read_text(errors="replace"),
                      re.MULTILINE)
        return "v_prediction" if v else "epsilon"
    if "v_pred" in names:
        return "v_prediction"
    guess = family.guess_v and V_PREDICTION_BIAS in names
    if guess and float(read_tensor(path, V_PREDICTION_BIAS).float().std(unbiased=False)) > 0.09:
        return "v_prediction"
    return "epsilon"


def load_single_file_components(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                                unet_dtype: torch.dtype | None = None):
    """Components (as ``load_components`` returns them) from a single-file SD1.x, SD2.x or SDXL checkpoint; the
    UNet in ``unet_dtype`` (default: ``dtype``)."""
    path = Path(path).expanduser()
    ckpt = open_checkpoint(path)
    family = FAMILIES.get(ckpt.family)
    if family is None:
        raise CheckpointError(f"{path} is a '{ckpt.family}' checkpoint; single files are read for SD1.x, SD2.x and "
                              "SDXL. Use a diffusers folder of it (diffusers' from_single_file, then save_pretrained)")
    return read_single_file(ckpt, family, dtype, unet_dtype)


def _text_sources(part: TextPart, encoder: torch.nn.Module, path: Path, names: set[str]) -> StoredTensors:
    own = encoder.state_dict()
    sources = keys.openclip_sources(own) if part.openclip else keys.clip_l_sources(own)
    return StoredTensors({name: (path, part.prefix + key, convert) for name, (key, convert) in sources.items()
                          if part.prefix + key in names})


@dataclass
class Parts:
    """What a single file holds besides its UNet, read, and the UNet's configuration."""

    tokenizers: list
    encoders: list
    vae: torch.nn.Module
    prediction: str
    unet_config: dict

    @property
    def sdxl(self) -> bool:
        return self.unet_config.get("addition_embed_type") == "text_time"  # (as load_sdxl_folder tells an SDXL UNet)


def read_parts(ckpt: Checkpoint, family: Family, dtype: torch.dtype = torch.float32) -> Parts:
    """Tokenizers, text encoders and VAE of the single file ``ckpt``, each tensor read and cast on its own, and the
    UNet configuration its prediction type asks for."""
    from diffusers import AutoencoderKL
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = ckpt.path
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
    prediction = prediction_of(path, names, family)
    tokenizers = [find_tokenizer(path, part.pad_token, part.config["max_position_embeddings"]) for part in family.texts]
    unet_config = dict(family.unet)
    if prediction == "v_prediction" and family.v_sample_size:
        unet_config["sample_size"] = family.v_sample_size
    with torch.device("meta"):  # the file holds every weight: none is initialised only to be replaced
        vae = AutoencoderKL(**SD_VAE, scaling_factor=family.vae_scaling)
        encoders = [(CLIPTextModelWithProjection if part.projection else CLIPTextModel)(CLIPTextConfig(**part.config))
                    for part in family.texts]
    incomplete = f"{path} is not a complete {family.label} checkpoint"
    for part, encoder in zip(family.texts, encoders):
        fill_position_ids(encoder)
        load_weights(encoder, _text_sources(part, encoder, path, names), "text encoder", incomplete, dtype)
    to_ldm = keys.vae_to_ldm(vae.state_dict())  # names only: LDM -> diffusers
    ldm_to_diffusers = dict(zip((keys.LDM_VAE + k for k in to_ldm), vae.state_dict()))
    vae_tensors = {ldm_to_diffusers[k]: (path, k) for k in names if k in ldm_to_diffusers}
    load_weights(vae, StoredTensors(vae_tensors), "VAE", incomplete, dtype)
    for module in (*encoders, vae):
        module.eval().requires_grad_(False)
    return Parts(tokenizers, encoders, vae, prediction, unet_config)


def read_single_file(ckpt: Checkpoint, family: Family, dtype: torch.dtype = torch.float32,
                     unet_dtype: torch.dtype | None = None):
    """The components of the single file ``ckpt`` with ``family``'s configuration, each tensor read and cast on its
    own and the small parts first, so that the UNet never has the whole file beside it."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from .components import Components
    from .sdxl import SDXLComponents, SDXLTextEncoders, SDXLUNet2DConditionModel

    parts = read_parts(ckpt, family, dtype)
    with torch.device("meta"):
        unet = (SDXLUNet2DConditionModel if parts.sdxl else UNet2DConditionModel)(**parts.unet_config)
    load_weights(unet, ckpt.tensors(), "UNet", f"{ckpt.path} is not a complete {family.label} checkpoint",
                 unet_dtype or dtype)
    unet.eval().requires_grad_(False)
    scheduler = DDPMScheduler.from_config({**SD_SCHEDULER, "prediction_type": parts.prediction})
    if parts.sdxl:
        unet.vae_scale_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        return SDXLComponents(*parts.tokenizers, SDXLTextEncoders(*parts.encoders), parts.vae, unet, scheduler)
    return Components(parts.tokenizers[0], parts.encoders[0], parts.vae, unet, scheduler)


def write_pipeline_folder(ckpt: Checkpoint, unet_state: dict[str, torch.Tensor], folder: str | os.PathLike) -> Path:
    """A diffusers pipeline folder (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``) of the single file
    ``ckpt`` with ``unet_state`` (diffusers names) as its UNet: text encoders, tokenizers and VAE read from the file
    in the UNet's dtype, and Euler's scheduler with trailing timesteps, so that one step of diffusers' pipeline
    (without guidance) is wadi's one-step image."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    from .components import write_model_index

    family = FAMILIES.get(ckpt.family)
    if family is None:
        raise CheckpointError(f"{ckpt.path} is a '{ckpt.family}' checkpoint; diffusers folders are written from "
                              "single files of SD1.x, SD2.x and SDXL; write a single-file output instead")
    folder = Path(folder)
    dtype = next(iter(unet_state.values())).dtype
    parts = read_parts(ckpt, family, dtype)
    for suffix, tokenizer, encoder in zip(("", "_2"), parts.tokenizers, parts.encoders):
        tokenizer.save_pretrained(folder / f"tokenizer{suffix}")
        encoder.save_pretrained(folder / f"text_encoder{suffix}")
    parts.vae.save_pretrained(folder / "vae")
    euler = {k: v for k, v in SD_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
    scheduler = EulerDiscreteScheduler.from_config({**euler, "prediction_type": parts.prediction,
                                                    "timestep_spacing": "trailing"})
    scheduler.save_pretrained(folder / "scheduler")
    with torch.device("meta"):
        UNet2DConditionModel(**parts.unet_config).save_config(folder / "unet")
    save_file({k: v.contiguous() for k, v in unet_state.items()}, str(folder / "unet" / f"{WEIGHTS}.safetensors"))
    write_model_index(folder, sdxl=parts.sdxl, scheduler=type(scheduler).__name__)
    return folder
