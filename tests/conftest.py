"""Tiny models built in code (no downloads), shared by the tests."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

# No test reaches the Hugging Face Hub (nor waits for a connection that never comes): the Hub's cache answers, or the
# error says it could not. Subprocesses the tests start inherit it.
os.environ["HF_HUB_OFFLINE"] = "1"


def tiny_unet_config(cross_attention_dim: int = 32) -> dict:
    return dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8)


def tiny_unet(seed: int = 0, **kw):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(**kw))
    with torch.no_grad():  # diffusers zero-initialises some layers; make every weight informative
        for p in unet.parameters():
            p.normal_(0, 0.05)
    return unet.eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, layers_per_block=1).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=100, max_position_embeddings=16)).eval()


class MLP(nn.Module):
    def __init__(self, sizes=(9, 6, 5), conv=False):
        super().__init__()
        self.a = nn.Linear(sizes[0], sizes[1])
        self.b = nn.Linear(sizes[1], sizes[2])
        self.conv = nn.Conv2d(3, 4, 3) if conv else None

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def randomize(params, seed=1, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def random_student(unet, path):
    """A LoRaD student file for ``unet`` (its unet-student layers, rank 4) with large random angles; ``unet`` is
    left as it was."""
    from wadi_core import lorad
    lorad.attach(unet, rank=4, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), std=0.3)
    try:
        return lorad.save_adapter(unet, path, preset="unet-student")
    finally:
        lorad.detach(unet)


@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def pipeline_dir(tmp_path):
    """A minimal diffusers pipeline folder (unet, vae, text_encoder) written with save_pretrained."""
    root = tmp_path / "base"
    root.mkdir()
    tiny_unet().save_pretrained(root / "unet")
    tiny_vae().save_pretrained(root / "vae")
    tiny_text_encoder().save_pretrained(root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    return root


def write_sd_folder(root, prediction_type: str = "epsilon"):
    """A complete tiny SD folder (tokenizer, text encoder, VAE, UNet, scheduler) that
    ``load_components`` and diffusers' ``StableDiffusionPipeline`` load."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from wadi_core.shapes import components as C

    tokenizer = CLIPTokenizer.from_pretrained(str(C.write_tokenizer(root.parent / f"{root.name}-tokenizer")))
    torch.manual_seed(0)
    from transformers import CLIPTextModel
    config = C.text_encoder_config(len(tokenizer))
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 32, 64, 2
    text = CLIPTextModel(config).eval()
    scheduler = DDPMScheduler.from_config({**C.SCHEDULER_CONFIG, "prediction_type": prediction_type})
    c = C.Components(tokenizer, text, tiny_vae(), tiny_unet(), scheduler)
    C.save_model_folder(c, root, unet_dtype=torch.float32)
    return root


def tiny_sdxl_unet_config() -> dict:
    """SDXL's layout in miniature: no attention at the first level, 1 and 2 transformer layers, linear projections,
    the pooled text embedding (16 values) and six time ids (8 frequencies each) as added conditions."""
    return dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=64)


def write_sdxl_folder(root, prediction_type: str = "epsilon"):
    """A complete tiny SDXL folder (two tokenizers and text encoders, VAE, UNet, scheduler) that ``load_components``
    and diffusers' ``StableDiffusionXLPipeline`` load."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from wadi_core.shapes import components as C

    tokenizer_dir = C.write_tokenizer(root.parent / f"{root.name}-tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = C.text_encoder_config(len(tokenizer))
    config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.projection_dim = 32, 64, 2, 16
    for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        cls(config).eval().save_pretrained(root / name)
    for name in ("tokenizer", "tokenizer_2"):
        tokenizer.save_pretrained(root / name)
    tiny_vae().save_pretrained(root / "vae")
    unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    unet.save_pretrained(root / "unet")
    DDPMScheduler.from_config({**C.SCHEDULER_CONFIG, "prediction_type": prediction_type}).save_pretrained(
        root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    return root


@pytest.fixture
def sd_dir(tmp_path):
    return write_sd_folder(tmp_path / "sd")


@pytest.fixture(scope="session")
def sd15_random(tmp_path_factory):
    """Random-weight SD1.5 files for the ComfyUI tests (built once per run): a single-file checkpoint ComfyUI
    detects as SD1.5, two LoRaD adapters for it, the student's rotations baked into a whole-UNet state dict as the
    authors release theirs, and the adapter wadi extract recovers from that file."""
    from comfy_support import random_lorad, released_unet, require_comfy, sd15_checkpoint

    from wadi_core.extract import extract
    require_comfy()  # skip (or fail in CI) before spending a minute on 2 GB of weights
    folder = tmp_path_factory.mktemp("sd15-random")
    files = {"checkpoint": sd15_checkpoint(folder / "sd15-random.safetensors"),
             "student": random_lorad(folder / "student.safetensors", seed=1),
             "style": random_lorad(folder / "style.safetensors", seed=2)}
    files["released"] = released_unet(folder / "rotated_unet-sdv1-5.safetensors", files["checkpoint"], files["student"])
    files["extracted"] = extract(files["checkpoint"], files["released"], folder / "extracted.safetensors", rank=4,
                                 progress=False).path
    return files
