"""The LoRaD adapter file (docs/lorad.md, "The adapter file").

One ``.safetensors`` file with kohya-style module keys that ComfyUI, A1111 and Forge already map
to their own weight names::

    lora_unet_<diffusers module path, '.' -> '_'>.lorad_up     [out, r]
    lora_unet_<...>.lorad_down                                  [r, in//2]

(``lora_transformer_`` for DiT backbones). Reading validates the whole file, and applying
validates every key and shape against the target before anything is attached.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .. import fileio
from ..models.families import family_of_model, model_kind
from ..models.hub import local_path
from . import functional as LF
from .module import DEFAULT_ADAPTER, adapter_tensors, attach_weights
from .presets import ADAPTABLE

FORMAT = "lorad"
FORMAT_VERSION = "1"
UP, DOWN = "lorad_up", "lorad_down"
PREFIXES = {"unet": "lora_unet", "transformer": "lora_transformer"}
_LORA_MARKERS = re.compile(r"\.(lora_A|lora_B|lora_up|lora_down|lora\.up|lora\.down|hada_w1_a|lokr_w1|oft_blocks|"
                           r"oft_diag|diff|alpha)(\.weight)?$")


class AdapterError(ValueError):
    """A LoRaD file that cannot be read or does not fit the model; the message names the fix."""


def encode_name(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


@dataclass
class AdapterFile:
    """A validated LoRaD file: ``layers`` maps the encoded layer key to ``(up, down)``."""

    path: Path | None
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return next(iter(self.layers.values()))[0].shape[1]

    @property
    def family(self) -> str:
        return self.metadata.get("wadi.base", "unknown")

    @property
    def preset(self) -> str:
        return self.metadata.get("wadi.preset", "custom")

    @property
    def prefix(self) -> str:
        if "wadi.prefix" in self.metadata:
            return self.metadata["wadi.prefix"]
        first = next(iter(self.layers))
        return next((p for p in PREFIXES.values() if first.startswith(p + "_")), "lora_unet")

    @property
    def parameter_count(self) -> int:
        return sum(up.numel() + down.numel() for up, down in self.layers.values())

    def label(self) -> str:
        return str(self.path) if self.path else "the adapter"


def read_adapter_safetensors(path: str | os.PathLike, tensors: bool = True) -> tuple[dict[str, str], dict]:
    """``(metadata, tensors)`` of an adapter file (tensors empty unless asked), or one clear AdapterError."""
    from safetensors import safe_open

    path = Path(local_path(path))  # a file on the Hugging Face Hub is read from the Hub's cache
    if not path.is_file():
        raise AdapterError(f"adapter file {path} does not exist (or is not a file); check the path")
    fileio.refuse_pickle(path, "adapters")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            values = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as err:  # safetensors raises its own error types for every corruption
        raise AdapterError(f"{path} is not a readable safetensors file ({err}); it may be truncated or "
                           "not an adapter at all — download or export it again") from None
    return metadata, values


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read and check a LoRaD file on its own (structure, pairs, ranks, finite values)."""
    metadata, tensors = read_adapter_safetensors(path)
    return _check_tensors(tensors, metadata, Path(path))


def _check_tensors(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str], path: Path | None) -> AdapterFile:
    where = str(path) if path else "the adapter"
    if not tensors:
        raise AdapterError(f"{where} holds no tensors; it is not a LoRaD adapter")
    fmt = metadata.get("wadi.format")
    lora_key = next((k for k in tensors if _LORA_MARKERS.search(k)), None)
    if lora_key is not None and fmt != FORMAT:
        raise AdapterError(f"{where} is a LoRA-style file (key '{lora_key}'), not a LoRaD adapter; load it with a "
                           "LoRA loader (ComfyUI LoraLoader, A1111 <lora:...>, diffusers load_lora_weights)")
    if fmt is not None and fmt != FORMAT:
        raise AdapterError(f"{where} says it is format '{fmt}', not '{FORMAT}'; it is not a LoRaD adapter")
    version = metadata.get("wadi.format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise AdapterError(f"{where} uses LoRaD format version {version}; this wadi reads version "
                           f"{FORMAT_VERSION} — upgrade wadi")

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in sorted(tensors):
        base, _, kind = key.rpartition(".")
        if kind not in (UP, DOWN):
            raise AdapterError(f"{where} has an unknown key '{key}'; LoRaD keys end in .{UP} or .{DOWN}")
        if kind == DOWN:
            continue
        down_key = f"{base}.{DOWN}"
        if down_key not in tensors:
            raise AdapterError(f"{where} is missing key '{down_key}' (it has '{key}'); the file is incomplete")
        layers[base] = (tensors[key], tensors[down_key])
    for key in tensors:
        base, _, kind = key.rpartition(".")
        if kind == DOWN and base not in layers:
            raise AdapterError(f"{where} is missing key '{base}.{UP}' (it has '{key}'); the file is incomplete")

    for base, (up, down) in layers.items():
        if up.ndim != 2 or down.ndim != 2 or up.shape[1] != down.shape[0] or 0 in up.shape or 0 in down.shape:
            raise AdapterError(f"{where}: '{base}' has up {tuple(up.shape)} and down {tuple(down.shape)}, "
                               "which do not form a rank-r pair [out, r] x [r, in//2]")
        for name, t in ((UP, up), (DOWN, down)):
            if not t.is_floating_point():
                raise AdapterError(f"{where}: '{base}.{name}' holds {str(t.dtype).replace('torch.', '')} values; "
                                   "LoRaD factors are floating-point numbers — the file is damaged or not an adapter")
            if not torch.isfinite(t).all():
                raise AdapterError(f"{where}: '{base}.{name}' contains NaN or Inf values; the training that "
                                   "wrote it diverged — use an earlier checkpoint")
        if not LF.angles_are_finite(up, down):
            raise AdapterError(f"{where}: the angles up @ down of '{base}' overflow (factors up to "
                               f"{max(up.abs().max().item(), down.abs().max().item()):.3g}); the file is damaged "
                               "or its training diverged — use an earlier checkpoint")
    _check_metadata(metadata, layers, where)
    return AdapterFile(path, layers, metadata)


def _metadata_int(metadata: dict[str, str], key: str, where: str) -> int | None:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise AdapterError(f"{where}: its metadata {key}={metadata[key]!r} is not a whole number; the file was "
                           "edited or damaged — export it again") from None


def _check_metadata(metadata: dict[str, str], layers: Mapping[str, tuple], where: str) -> None:
    """What the metadata says must be what the tensors hold: a file whose header disagrees was edited or
    damaged, and guessing which side is right would load the wrong thing."""
    kind = metadata.get("wadi.adapter_type", FORMAT)
    if kind != FORMAT:
        raise AdapterError(f"{where}: its metadata says it is a '{kind}' adapter but it holds LoRaD tensors; the "
                           "file was edited or damaged — export it again")
    rank = _metadata_int(metadata, "wadi.rank", where)
    actual = max(up.shape[1] for up, _ in layers.values())
    if rank is not None and rank != actual:
        raise AdapterError(f"{where}: its metadata says wadi.rank={rank} but its tensors have rank {actual}; the "
                           "file was edited or damaged — export it again")
    count = _metadata_int(metadata, "wadi.layers", where)
    if count is not None and count != len(layers):
        raise AdapterError(f"{where}: its metadata says wadi.layers={count} but it holds {len(layers)} layers; the "
                           "file is incomplete or was edited — export it again")
    prefix = metadata.get("wadi.prefix")
    if prefix is not None:
        if prefix not in PREFIXES.values():
            raise AdapterError(f"{where}: its metadata wadi.prefix={prefix!r} is not one of "
                               f"{', '.join(PREFIXES.values())}; the file was edited or damaged")
        stray = next((k for k in layers if not k.startswith(prefix + "_")), None)
        if stray is not None:
            raise AdapterError(f"{where}: its metadata says wadi.prefix={prefix!r} but key '{stray}' does not start "
                               "with it; the file was edited or damaged — export it again")


def check_strength(adapter: AdapterFile, strength: float) -> None:
    """A strength must be a finite number whose angles stay finite (a huge strength overflows like huge factors)."""
    import math

    if not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise AdapterError(f"the strength of {adapter.label()} must be a finite number, not {strength!r}")
    for key, (up, down) in adapter.layers.items():
        if not LF.angles_are_finite(up, down, strength):
            raise AdapterError(f"{adapter.label()} at strength {strength:g} gives angles that overflow on '{key}'; "
                               "use a strength nearer 1")


def target_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{module name: weight shape}`` of every layer an adapter may target."""
    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, ADAPTABLE) and name}


def match_layers(adapter: AdapterFile, shapes: Mapping[str, tuple[int, ...]], kind: str = "unet",
                 family: str = "unknown") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Map every layer of ``adapter`` onto ``{module name: weight shape}``; raise on the first misfit.

    Returns ``{module name: (up, down)}``. Nothing is modified.
    """
    where = adapter.label()
    prefix = PREFIXES[kind]
    by_key: dict[str, str] = {}
    for name in shapes:
        key = encode_name(prefix, name)
        if key in by_key:
            raise AdapterError(f"layers '{by_key[key]}' and '{name}' share the key '{key}'; "
                               "this model cannot use kohya-style LoRaD keys")
        by_key[key] = name
    matched, misfit, made_for = {}, None, "base model"
    for key, (up, down) in adapter.layers.items():
        name = by_key.get(key)
        if name is None:
            hint = ""
            if not key.startswith(prefix + "_"):
                hint = f" (it is for a {'DiT' if key.startswith('lora_transformer_') else 'UNet'} backbone)"
            misfit, made_for = f"key '{key}' names no layer of this model{hint}", "architecture"
            break
        (out_f, _), (_, half) = LF.adapter_shapes(shapes[name], up.shape[1])
        if up.shape[0] != out_f or down.shape[1] != half:
            misfit = (f"'{key}' has up {tuple(up.shape)} / down {tuple(down.shape)} but layer '{name}' has weight "
                      f"{tuple(shapes[name])} (needs up [{out_f}, r], down [r, {half}])")
            break
        matched[name] = (up, down)
    if adapter.family not in ("unknown", "custom") and family != "unknown" and adapter.family != family:
        first = f" (the first misfit: {misfit})" if misfit else ""
        raise AdapterError(f"{where} was trained for '{adapter.family}' but the model is '{family}'{first}; "
                           "use an adapter made for this base model")
    if misfit:
        raise AdapterError(f"{where}: {misfit}; the adapter was made for another {made_for}")
    return matched


def load_adapter(model: nn.Module, adapter: str | os.PathLike | AdapterFile, adapter_name: str = DEFAULT_ADAPTER,
                 strength: float = 1.0, trainable: bool = False) -> AdapterFile:
    """Validate ``adapter`` against ``model`` completely, then attach it. Raises before any change."""
    file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
    matched = match_layers(file, target_shapes(model), model_kind(model), family_of_model(model))
    check_strength(file, strength)
    attach_weights(model, matched, adapter_name=adapter_name, strength=strength, trainable=trainable)
    return file


# The kohya-style tags A1111 and Forge read to tell which base a LoRA file is for (their Lora card hides files for
# another base): SD2.x files say so, SD1.x files say they are not.
HOST_VERSION_TAGS = {"sd15": {"ss_base_model_version": "sd_v1", "ss_v2": "False"},
                     "sd21": {"ss_base_model_version": "sd_2.1", "ss_v2": "True"},
                     "sdxl": {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"}}


def adapter_metadata(family: str, rank: int, preset: str, prefix: str, layers: int,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    meta = {
        "wadi.format": FORMAT,
        "wadi.format_version": FORMAT_VERSION,
        "wadi.base": family,
        "wadi.rank": str(rank),
        "wadi.preset": preset,
        "wadi.prefix": prefix,
        "wadi.layers": str(layers),
        **HOST_VERSION_TAGS.get(family, {}),
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def save_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER,
                 preset: str = "custom", family: str | None = None, metadata: Mapping[str, str] | None = None,
                 overwrite: bool = False) -> Path:
    """Write one attached adapter as a LoRaD file (atomically)."""
    layers = adapter_tensors(model, adapter_name)
    prefix = PREFIXES[model_kind(model)]
    tensors = {}
    for name, (up, down) in layers.items():
        key = encode_name(prefix, name)
        tensors[f"{key}.{UP}"] = up.float()
        tensors[f"{key}.{DOWN}"] = down.float()
    ranks = {up.shape[1] for up, _ in layers.values()}
    meta = adapter_metadata(family or family_of_model(model), max(ranks), preset, prefix, len(layers), metadata)
    return fileio.save_safetensors(tensors, path, meta, overwrite=overwrite)


def describe_adapter(adapter: str | os.PathLike | AdapterFile) -> dict:
    """What ``wadi inspect`` prints: family, preset, rank, layers, parameters and angle statistics."""
    import math

    file = adapter if isinstance(adapter, AdapterFile) else read_adapter(adapter)
    per_layer = []
    total_abs = total_n = 0.0
    max_abs = 0.0
    for key, (up, down) in file.layers.items():
        theta = LF.angles(up.double(), down.double()).abs()  # float64: sums of large angles stay finite
        per_layer.append((key, math.degrees(theta.mean().item()), math.degrees(theta.max().item())))
        total_abs += theta.sum().item()
        total_n += theta.numel()
        max_abs = max(max_abs, theta.max().item())
    per_layer.sort(key=lambda row: -row[1])
    return {
        "path": str(file.path),
        "family": file.family,
        "preset": file.preset,
        "rank": file.rank,
        "layers": len(file.layers),
        "parameters": file.parameter_count,
        "angle_mean_abs_deg": math.degrees(total_abs / max(total_n, 1)),
        "angle_max_abs_deg": math.degrees(max_abs),
        "most_rotated_layers": [{"key": k, "mean_abs_deg": m, "max_abs_deg": x} for k, m, x in per_layer[:5]],
        "metadata": file.metadata,
    }
