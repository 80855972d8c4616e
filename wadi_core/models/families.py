"""Model families: the reference architectures of the paper and how to recognise a family.

The family is written into every adapter file so that an adapter trained on SD2.1 is refused
by an SD1.5 model with a message instead of a shape error deep inside a forward.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD21_UNET = dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True, upcast_attention=True)
# SDXL base 1.0's UNet: three levels (the first without attention), 1, 2 and 10 transformer layers per attention block,
# 2048-wide text features, and the added conditions (pooled text embedding and time ids)
SDXL_UNET = dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)


def sd15_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**SD15_UNET)


def sd21_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**SD21_UNET)


def sdxl_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**SDXL_UNET)


def pixart_alpha_transformer() -> nn.Module:
    from diffusers import PixArtTransformer2DModel
    return PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, sample_size=64, patch_size=2, caption_channels=4096,
        norm_type="ada_norm_single", use_additional_conditions=False, attention_bias=True)


# family -> (builder, presets that apply, paper ranks per preset)
REFERENCE_ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], dict[str, tuple[int, ...]]]] = {
    "sd15": (sd15_unet, {"unet-student": (64, 128, 256, 512), "unet-fake": (16, 32, 64)}),
    "sd21": (sd21_unet, {"unet-student": (256,), "unet-fake": (32,)}),
    # not in the paper (no SDXL distillation has been run here): rank 128 keeps the share near the paper's 10%
    "sdxl": (sdxl_unet, {"unet-student": (128, 256), "unet-fake": (32,)}),
    "pixart-alpha": (pixart_alpha_transformer, {"dit-student": (128,), "dit-fake": (32,)}),
}


def build_on_meta(family: str) -> nn.Module:
    """A full-size reference model with no memory behind its weights."""
    builder, _ = REFERENCE_ARCHITECTURES[family]
    with torch.device("meta"):
        return builder()


def family_from_weight_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Guess the family from ``{diffusers weight name: shape}`` of a UNet or DiT.

    Returns one of the known family names, or ``"unknown"``.
    """
    k = shapes.get("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    if k is not None:
        if tuple(k) == (320, 768):
            return "sd15"
        if tuple(k) == (320, 1024):
            return "sd21"
        if tuple(k) == (64, 64) and tuple(shapes.get("conv_in.weight", ())) == (64, 4, 3, 3):
            return "shapes"  # the embedded default (wadi_core/shapes/components.py)
        return "unknown"
    k = shapes.get("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    if k is not None and tuple(k) == (640, 2048) and "add_embedding.linear_1.weight" in shapes:
        return "sdxl"
    k = shapes.get("transformer_blocks.0.attn2.to_k.weight")
    if k is not None and tuple(k) == (1152, 1152) and "caption_projection.linear_1.weight" in shapes:
        return "pixart-alpha"
    return "unknown"


def family_of_model(model: nn.Module) -> str:
    family = getattr(model, "wadi_family", None)  # set by our loaders for the embedded world
    if family:
        return family
    # PEFT moves a wrapped layer's weight to "<layer>.base_layer.weight"
    return family_from_weight_shapes({n.replace(".base_layer.", "."): tuple(p.shape)
                                      for n, p in model.named_parameters()})


def model_kind(model_or_class_name) -> str:
    """``"transformer"`` for DiT backbones, ``"unet"`` otherwise (used for key prefixes)."""
    name = model_or_class_name if isinstance(model_or_class_name, str) else type(model_or_class_name).__name__
    return "transformer" if "Transformer" in name else "unet"
