"""Weight names: diffusers <-> original LDM ("single-file", as ComfyUI and A1111 load them).

The UNet mapping is derived from the block layout (layers per block, which blocks have
attention), so it covers SD1.x, SD2.x, SDXL and any smaller UNet of the same shape, such as the
embedded default. Attention internals have the same names on both sides; only the block
containers and the ResNet sub-layers are renamed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_CLIP = "cond_stage_model.transformer."
LDM_SDXL_CLIP_L = "conditioner.embedders.0.transformer."  # SDXL's first text encoder (CLIP ViT-L)
LDM_SDXL_CLIP_G = "conditioner.embedders.1.model."  # SDXL's second (OpenCLIP ViT-bigG, OpenCLIP's names)
LDM_SD2_CLIP = "cond_stage_model.model."  # SD2.x's text encoder (OpenCLIP ViT-H, OpenCLIP's names)

_RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
_ATTN_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class KeyConversionError(ValueError):
    pass


@dataclass(frozen=True)
class UNetLayout:
    """What the block names depend on: resnets per down block and where attention is."""

    layers_per_block: int
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> "UNetLayout":
        keys = list(keys)
        resnets = [int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))]
        downs = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))}
        if not resnets or not downs:
            raise KeyConversionError("these weights have no diffusers UNet down_blocks; not a diffusers UNet")
        n = max(downs) + 1
        return cls(max(resnets) + 1,
                   tuple(any(k.startswith(f"down_blocks.{i}.attentions.") for k in keys) for i in range(n)),
                   tuple(any(k.startswith(f"up_blocks.{i}.attentions.") for k in keys) for i in range(n)))

    @classmethod
    def from_ldm_keys(cls, keys: Iterable[str]) -> "UNetLayout":
        keys = [k[len(LDM_UNET):] if k.startswith(LDM_UNET) else k for k in keys]
        inputs = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))}
        ops = sorted({int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))})
        if not inputs:
            raise KeyConversionError("these weights have no LDM input_blocks; not an original-layout SD UNet")
        step = ops[0] if ops else max(inputs) + 1  # = layers_per_block + 1
        n = len(ops) + 1
        return cls(step - 1,
                   tuple(any(k.startswith(f"input_blocks.{1 + i * step}.1.") for k in keys) for i in range(n)),
                   tuple(any(k.startswith(f"output_blocks.{i * step}.1.") for k in keys) for i in range(n)))

    def module_pairs(self) -> list[tuple[str, str, dict[str, str]]]:
        """``(diffusers prefix, LDM prefix, sub-layer renames)`` for every block of the UNet."""
        step = self.layers_per_block + 1
        pairs = [("time_embedding.linear_1", "time_embed.0", {}), ("time_embedding.linear_2", "time_embed.2", {}),
                 # SDXL's added conditions (pooled text embedding and time ids) sit where LDM has a class embedding;
                 # read back from LDM, label_emb is SDXL's (listed first: of the families wadi reads, only SDXL has it)
                 ("add_embedding.linear_1", "label_emb.0.0", {}), ("add_embedding.linear_2", "label_emb.0.2", {}),
                 ("class_embedding.linear_1", "label_emb.0.0", {}), ("class_embedding.linear_2", "label_emb.0.2", {}),
                 ("conv_in", "input_blocks.0.0", {}), ("conv_norm_out", "out.0", {}), ("conv_out", "out.2", {}),
                 ("mid_block.resnets.0", "middle_block.0", _RESNET_UNET),
                 ("mid_block.attentions.0", "middle_block.1", {}),
                 ("mid_block.resnets.1", "middle_block.2", _RESNET_UNET)]
        n = len(self.down_attention)
        for i in range(n):
            for j in range(self.layers_per_block):
                pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{1 + i * step + j}.0", _RESNET_UNET))
                pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{1 + i * step + j}.1", {}))
            if i < n - 1:
                pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * step}.0.op", {}))
            for j in range(step):
                pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{i * step + j}.0", _RESNET_UNET))
                pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{i * step + j}.1", {}))
            if i < n - 1:
                slot = 2 if self.up_attention[i] else 1
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{i * step + step - 1}.{slot}.conv", {}))
        return pairs


def _convert(name: str, pairs, forward: bool) -> str | None:
    # Longest prefix first: "output_blocks.2.1.conv" (an upsampler) before "output_blocks.2.1".
    for d_prefix, l_prefix, renames in sorted(pairs, key=lambda p: -len(p[0 if forward else 1])):
        src, dst = (d_prefix, l_prefix) if forward else (l_prefix, d_prefix)
        if not name.startswith(src + "."):
            continue
        rest = name[len(src) + 1:]
        for a, b in renames.items():
            s, t = (a, b) if forward else (b, a)
            if rest.startswith(s + "."):
                rest = t + rest[len(s):]
                break
        return f"{dst}.{rest}"
    return None


def unet_to_ldm(name: str, layout: UNetLayout) -> str:
    """``down_blocks.0.resnets.0.conv1.weight`` -> ``input_blocks.1.0.in_layers.2.weight``."""
    out = _convert(name, layout.module_pairs(), forward=True)
    if out is None:
        raise KeyConversionError(f"no original-LDM name for UNet weight '{name}'")
    return out


def unet_from_ldm(name: str, layout: UNetLayout) -> str:
    out = _convert(name, layout.module_pairs(), forward=False)
    if out is None:
        raise KeyConversionError(f"no diffusers name for LDM UNet weight '{name}'")
    return out


def unet_name_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    """``{diffusers key: LDM key (without the model.diffusion_model. prefix)}`` for a UNet."""
    keys = list(diffusers_keys)
    layout = UNetLayout.from_diffusers_keys(keys)
    mapping = {k: unet_to_ldm(k, layout) for k in keys}
    if len(set(mapping.values())) != len(mapping):
        raise KeyConversionError("two UNet weights map to the same LDM name; the layout is not SD-like")
    return mapping


# --- VAE --------------------------------------------------------------------------------------

def _vae_pairs(num_blocks: int, layers_per_block: int) -> list[tuple[str, str, dict[str, str]]]:
    pairs = [("encoder.conv_norm_out", "encoder.norm_out", {}), ("decoder.conv_norm_out", "decoder.norm_out", {})]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", _RESNET_VAE),
                  (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", _RESNET_VAE),
                  (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _ATTN_VAE)]
    for i in range(num_blocks):
        up = num_blocks - 1 - i  # LDM numbers decoder blocks from the highest resolution
        for j in range(layers_per_block + 1):  # decoder blocks have one resnet more than encoder blocks
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _RESNET_VAE))
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{up}.block.{j}", _RESNET_VAE))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", {}))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{up}.upsample.conv", {}))
    return pairs


def vae_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in LDM names (mid attention as 1x1 convs)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))}
    pairs = _vae_pairs(max(blocks) + 1, max(layers) + 1)
    out = {}
    for name, tensor in state.items():
        new = _convert(name, pairs, forward=True) or name
        if ".mid.attn_1." in new and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[new] = tensor
    return out


def clip_l_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD1.x text encoder (Hugging Face CLIPTextModel): LDM only adds a prefix."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state.items()}


def clip_l_sources(names: Iterable[str]) -> dict[str, tuple[str, None]]:
    """The inverse of :func:`clip_l_to_ldm`, by name (the form :func:`openclip_sources` returns)."""
    return {name: (f"text_model.{name.removeprefix('text_model.')}", None) for name in names
            if not name.endswith("position_ids")}


_OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_OPENCLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                 "embeddings.position_embedding.weight": "positional_embedding",
                 "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # fused, in this order, into OpenCLIP's in_proj


def openclip_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``CLIPTextModelWithProjection`` state dict in OpenCLIP's names (SDXL's second text encoder):
    q, k and v fused into ``in_proj``, the projection stored transposed (OpenCLIP multiplies ``x @ P``)."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out = {}
    for name, tensor in state.items():
        if name in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[name]] = tensor
        elif name == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif m := re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name):
            layer, part, kind = m.groups()
            block = f"transformer.resblocks.{layer}."
            if part in _QKV:
                if part == _QKV[0]:  # written once, for all three
                    out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                        [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
            elif part in _OPENCLIP_LAYER:
                out[f"{block}{_OPENCLIP_LAYER[part]}.{kind}"] = tensor
            else:
                raise KeyConversionError(f"no OpenCLIP name for text-encoder weight '{name}'")
        else:
            raise KeyConversionError(f"no OpenCLIP name for text-encoder weight '{name}'")
    return out


def _third(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda fused: fused.chunk(3)[index]


def _transposed(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.T.contiguous()


def openclip_sources(names: Iterable[str]) -> dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]]:
    """The inverse of :func:`openclip_to_ldm`, by name: for each weight of a Hugging Face CLIP text model
    (``names``), the OpenCLIP tensor it is read from and what turns that tensor into it (None: taken as it is; a
    third of the fused ``in_proj`` for q, k and v; the projection transposed)."""
    out = {}
    for name in names:
        short = name.removeprefix("text_model.")
        if short.endswith("position_ids"):
            continue
        if short in _OPENCLIP_TOP:
            out[name] = (_OPENCLIP_TOP[short], None)
        elif short == "text_projection.weight":
            out[name] = ("text_projection", _transposed)
        elif (m := re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", short)) and (
                m.group(2) in _OPENCLIP_LAYER or m.group(2) in _QKV):
            index, part, kind = m.groups()
            block = f"transformer.resblocks.{index}."
            if part in _QKV:
                out[name] = (f"{block}attn.in_proj_{kind}", _third(_QKV.index(part)))
            else:
                out[name] = (f"{block}{_OPENCLIP_LAYER[part]}.{kind}", None)
        else:
            raise KeyConversionError(f"no OpenCLIP name for text-encoder weight '{name}'")
    return out


def add_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}
