"""Bake LoRaD adapters into a checkpoint, or export them as a plain LoRA.

Everything is validated (every adapter key and shape against the base) before anything is
written, and outputs are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import fileio, students
from .models import keys
from .lorad import functional as LF
from .lorad.io import AdapterError, AdapterFile, check_strength, encode_name, match_layers, read_adapter
from .models.checkpoint import WEIGHTS, Checkpoint, CheckpointError, open_checkpoint
from .models.components import is_dit_folder
from .models.hub import local_path
from .models.single_file import FAMILIES, find_tokenizer, write_pipeline_folder


def parse_adapter_spec(spec: str) -> tuple[Path, float]:
    """``"A.safetensors:0.8"`` -> ``(Path("A.safetensors"), 0.8)``; no suffix means strength 1.

    A colon that belongs to the path (``C:\\models\\a.safetensors``, or an existing file whose name has one)
    is kept; otherwise what follows the last colon must be a finite number."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return Path(spec), 1.0
    if Path(spec).expanduser().is_file() and not Path(head).expanduser().is_file():
        return Path(spec), 1.0
    try:
        strength = float(tail)
    except ValueError:
        raise AdapterError(f"'{spec}': the strength after the last ':' must be a number (for example "
                           f"{head}:0.8), not '{tail}'") from None
    if not math.isfinite(strength):
        raise AdapterError(f"'{spec}': the strength must be a finite number, not '{tail}'")
    return Path(head), strength


@dataclass
class MergePlan:
    """The validated angles to apply: ``{layer name: [(up, down, strength), ...]}``."""

    checkpoint: Checkpoint
    adapters: list[tuple[AdapterFile, float]]
    layers: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]]

    def theta(self, layer: str) -> torch.Tensor | None:
        return LF.summed_angles(self.layers[layer])


def plan_merge(base: str | os.PathLike | Checkpoint, adapters: Sequence[tuple[str | os.PathLike, float]]) -> MergePlan:
    ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    if not adapters and not ckpt.backbone_file:
        raise ValueError("no adapter given; pass at least one --adapter FILE[:strength]")
    shapes = ckpt.layer_shapes
    layers: dict[str, list] = {}
    files = []
    for path, strength in adapters:
        file = read_adapter(path)
        check_strength(file, float(strength))
        for name, (up, down) in match_layers(file, shapes, ckpt.backbone, ckpt.family).items():
            layers.setdefault(name, []).append((up, down, float(strength)))
        files.append((file, float(strength)))
    return MergePlan(ckpt, files, layers)


def _rotated_backbone(plan: MergePlan, progress: bool) -> dict[str, torch.Tensor]:
    """Every backbone tensor under its diffusers name, the adapted weights rotated."""
    ckpt = plan.checkpoint
    out = {}
    for name in tqdm(list(ckpt.stored), desc="merging", unit="tensor", disable=not progress):
        tensor = read_finite(ckpt, name)
        layer = name[: -len(".weight")] if name.endswith(".weight") else None
        if layer in plan.layers:
            tensor = LF.rotate_by_angles(tensor, plan.theta(layer))
            if not bool(torch.isfinite(tensor).all()):
                raise AdapterError(f"the adapters together give non-finite weights on '{layer}'; lower their "
                                   "strengths")
        out[name] = tensor
    return out


def read_finite(ckpt: Checkpoint, name: str) -> torch.Tensor:
    """One backbone tensor; a base whose weights hold NaN or Inf is refused (it would poison any merge)."""
    tensor = ckpt.read(name)
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise CheckpointError(f"the base model's weight '{name}' in {ckpt.path} holds NaN or Inf values; the "
                              "checkpoint is damaged — download or convert it again")
    return tensor


def resolve_format(out: Path, requested: str) -> str:
    if requested == "auto":
        return "single-file" if out.suffix == ".safetensors" else "diffusers"
    if requested == "single-file" and out.suffix != ".safetensors":
        raise ValueError(f"a single-file checkpoint is written to a .safetensors path, not {out}")
    if requested == "diffusers" and out.suffix == ".safetensors":
        raise ValueError(f"a diffusers model is a folder; give a folder path instead of {out}")
    if requested not in ("single-file", "diffusers"):
        raise ValueError(f"unknown output format '{requested}'; use auto, diffusers or single-file")
    return requested


def merge_checkpoint(base: str | os.PathLike, adapters: Sequence[tuple[str | os.PathLike, float]],
                     out: str | os.PathLike, out_format: str = "auto", overwrite: bool = False,
                     progress: bool = True) -> Path:
    """Rotate ``base``'s backbone by the adapters (angles add) and write it to ``out``.

    ``out_format`` is ``diffusers`` (a folder), ``single-file`` (one .safetensors in the
    original LDM layout that ComfyUI and A1111 load) or ``auto`` (by the ``out`` suffix).
    """
    out = Path(out)
    fmt = resolve_format(out, out_format)
    refuse_inputs_as_output(out, base, adapters)
    with fileio.claim(out, overwrite):
        plan = plan_merge(base, adapters)
        ckpt = plan.checkpoint
        _check_convertible(ckpt, fmt)
        backbone = _rotated_backbone(plan, progress)
        if fmt == "single-file":
            return _write_single_file(ckpt, backbone, out, overwrite)
        return _write_diffusers(ckpt, backbone, out, overwrite)


def refuse_inputs_as_output(out: Path, base, adapters: Sequence[tuple[str | os.PathLike, float]]) -> None:
    inputs = [("--model", base.path if isinstance(base, Checkpoint) else base)]
    if isinstance(base, Checkpoint) and base.backbone_file:
        inputs.append(("--unet", base.backbone_file))
    fileio.refuse_same_path(out, inputs + [("--adapter", path) for path, _ in adapters])


def _check_convertible(ckpt: Checkpoint, fmt: str) -> None:
    """Refuse conversions we cannot do before any work is spent."""
    if fmt == "single-file" and ckpt.kind != "single-file" and ckpt.backbone != "unet":
        raise CheckpointError("single-file export exists only for SD-style UNets; write a diffusers folder for "
                              "DiT models")
    if fmt == "diffusers" and ckpt.kind == "single-file" and ckpt.family not in FAMILIES:
        raise CheckpointError(f"{ckpt.path}: cannot tell which UNet config this single-file checkpoint needs "
                              f"(family '{ckpt.family}'; SD1.x, SD2.x and SDXL are known); write a single-file "
                              "output instead")
    if fmt == "diffusers" and ckpt.kind == "single-file":
        find_tokenizer(ckpt.path)  # the pipeline's tokenizers (the file has none), found before any work


def _write_single_file(ckpt: Checkpoint, backbone: dict[str, torch.Tensor], out: Path, overwrite: bool) -> Path:
    from safetensors import safe_open
    if ckpt.kind == "single-file":
        # Keep every other tensor (VAE, text encoder, EMA ...) and the file's metadata as they are.
        (file,) = ckpt.files()
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for name, tensor in backbone.items():
            tensors[ckpt.stored[name][1]] = tensor
        return fileio.save_safetensors(tensors, out, metadata, overwrite)
    names = keys.unet_name_map(backbone)
    tensors = {keys.LDM_UNET + names[k]: v for k, v in backbone.items()}
    if ckpt.kind == "diffusers-pipeline":
        tensors.update(keys.add_prefix(keys.vae_to_ldm(_read_folder(ckpt.path / "vae")), keys.LDM_VAE))
        text, text_2 = ckpt.path / "text_encoder", ckpt.path / "text_encoder_2"
        if text_2.is_dir():  # SDXL: CLIP ViT-L as for SD1.x under SDXL's prefix, then OpenCLIP bigG
            tensors.update(keys.add_prefix(keys.clip_l_to_ldm(_read_folder(text)), keys.LDM_SDXL_CLIP_L))
            tensors.update(keys.add_prefix(keys.openclip_to_ldm(_read_folder(text_2)), keys.LDM_SDXL_CLIP_G))
        elif text.is_dir() and _is_openclip(text):  # SD2.x: OpenCLIP ViT-H, in OpenCLIP's names
            tensors.update(keys.add_prefix(keys.openclip_to_ldm(_read_folder(text)), keys.LDM_SD2_CLIP))
        elif text.is_dir():
            tensors.update(keys.add_prefix(keys.clip_l_to_ldm(_read_folder(text)), keys.LDM_CLIP))
    return fileio.save_safetensors(tensors, out, {"wadi.merged_from": str(ckpt.path)}, overwrite)


def _is_openclip(text_encoder: Path) -> bool:
    """Whether a pipeline's text encoder is OpenCLIP's (SD2.x: GELU; CLIP ViT-L, SD1.x's, uses quick GELU)."""
    config = json.loads((text_encoder / "config.json").read_text())
    return config.get("hidden_act") == "gelu"


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights; the pipeline folder is incomplete")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _write_diffusers(ckpt: Checkpoint, backbone: dict[str, torch.Tensor], out: Path, overwrite: bool) -> Path:
    from safetensors.torch import save_file
    with fileio.atomic_dir(out, overwrite) as tmp:
        if ckpt.kind == "single-file":  # the whole pipeline, its other parts read from the file
            write_pipeline_folder(ckpt, backbone, tmp)
            return out
        if ckpt.kind == "diffusers-pipeline":
            model_dir = tmp / ckpt.backbone
            shutil.copytree(ckpt.path, tmp, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names if Path(d) == ckpt.model_dir
                                                     and n.startswith(WEIGHTS)])
        else:
            model_dir = tmp
            shutil.copytree(ckpt.path, tmp, dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names if n.startswith(WEIGHTS)])
        save_file({k: v.contiguous() for k, v in backbone.items()}, str(model_dir / f"{WEIGHTS}.safetensors"))
    return out


# --- export to a plain LoRA -------------------------------------------------------------------

@dataclass
class LoraExport:
    path: Path
    layers: int
    rank: int
    relative_error: float  # ||delta - lora||_F / ||delta||_F over all layers
    worst_layer: str
    worst_error: float


def export_lora(base: str | os.PathLike, adapters: Sequence[tuple[str | os.PathLike, float]], out: str | os.PathLike,
                rank: int, dtype: torch.dtype = torch.float16, overwrite: bool = False,
                progress: bool = True, on_layer: Callable[[int, int], None] | None = None) -> LoraExport:
    """Approximate the rotation delta ``W' - W`` of each layer by its rank-``rank`` truncated SVD (randomised for
    ranks small against the layer; the error reported is that of the factors written).

    Writes a kohya-style LoRA (``lora_up.weight``, ``lora_down.weight``, ``alpha = rank``) that
    ComfyUI, A1111 and diffusers load as an ordinary LoRA, and reports the approximation error.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if not adapters:
        raise ValueError("no adapter given; pass at least one --adapter FILE[:strength]")
    out = Path(out)
    refuse_inputs_as_output(out, base, adapters)
    with fileio.claim(out, overwrite):
        return _export_lora(base, adapters, out, rank, dtype, overwrite, progress, on_layer)


def _svd(d: torch.Tensor, rank: int, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``rank`` SVD of one layer's delta; a float32 SVD that does not converge is retried in float64."""
    try:
        return LF.truncated_svd(d, rank)
    except torch.linalg.LinAlgError:
        try:
            u, s, vh = LF.truncated_svd(d.double(), rank)
            return u.float(), s.float(), vh.float()
        except torch.linalg.LinAlgError:
            raise AdapterError(f"the SVD of the delta of '{layer}' did not converge (its values span "
                               f"{d.abs().min().item():.3g} to {d.abs().max().item():.3g}); the adapter is "
                               "degenerate there — export it at a lower strength, or merge it instead") from None


def _export_lora(base, adapters, out: Path, rank: int, dtype: torch.dtype, overwrite: bool, progress: bool,
                 on_layer: Callable[[int, int], None] | None) -> LoraExport:
    plan = plan_merge(base, adapters)
    full_ranks = {layer: min(plan.checkpoint.shapes[layer + ".weight"][0],
                             LF.flat_in_features(plan.checkpoint.shapes[layer + ".weight"])) for layer in plan.layers}
    if rank > max(full_ranks.values()):
        raise ValueError(f"LoRA rank {rank} is above the full rank of every adapted layer (at most "
                         f"{max(full_ranks.values())}); give --rank {max(full_ranks.values())} or less")
    prefix = {"unet": "lora_unet", "transformer": "lora_transformer"}[plan.checkpoint.backbone]
    tensors: dict[str, torch.Tensor] = {}
    err_sq = total_sq = 0.0
    worst = ("", 0.0)
    for done, layer in enumerate(tqdm(sorted(plan.layers), desc="export-lora (SVD)", unit="layer",
                                      disable=not progress)):
        if on_layer is not None:  # e.g. ComfyUI's progress bar
            on_layer(done, len(plan.layers))
        weight = read_finite(plan.checkpoint, layer + ".weight").float()
        d = (LF.rotate_by_angles(weight, plan.theta(layer)) - weight).reshape(weight.shape[0], -1)
        if not bool(torch.isfinite(d).all()):
            raise AdapterError(f"the adapters together give non-finite weights on '{layer}'; lower their strengths")
        u, s, vh = _svd(d, rank, layer)
        r = s.numel()
        root = s.sqrt()
        up, down = u * root, root[:, None] * vh
        layer_err, layer_total = float((d - up @ down).pow(2).sum()), float(d.pow(2).sum())  # of these factors
        if weight.ndim > 2:
            down = down.reshape(r, *weight.shape[1:])
            up = up.reshape(*up.shape, *([1] * (weight.ndim - 2)))
        err_sq, total_sq = err_sq + layer_err, total_sq + layer_total
        rel = math.sqrt(layer_err / layer_total) if layer_total > 0 else 0.0
        if rel >= worst[1]:
            worst = (layer, rel)
        key = encode_name(prefix, layer)
        tensors[f"{key}.lora_up.weight"] = up.to(dtype)
        tensors[f"{key}.lora_down.weight"] = down.to(dtype)
        tensors[f"{key}.alpha"] = torch.tensor(float(r), dtype=dtype)
    used = min(rank, max(full_ranks.values()))
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(used), "ss_network_alpha": str(used),
            "wadi.exported_from": "lorad", "wadi.base": plan.checkpoint.family}
    path = fileio.save_safetensors(tensors, out, meta, overwrite)
    relative = math.sqrt(err_sq / total_sq) if total_sq > 0 else 0.0
    return LoraExport(path, len(plan.layers), used, relative, worst[0], worst[1])


# --- the student merged into its teacher's folder -------------------------------------------------

def export_merged(teacher: str, adapter: str | Path, out: str | Path, overwrite: bool = False,
                  backbone: str | os.PathLike | None = None) -> Path:
    """A copy of the teacher's diffusers folder whose UNet (or DiT; ``backbone``: the state dict that replaced
    the teacher's) has the student baked in; of a single-file teacher, a single file (``out`` ending in
    ``.safetensors``) or a diffusers pipeline folder."""
    fileio.refuse_same_path(out, [("--model", teacher), ("--unet", backbone), ("--student", adapter)])
    if Path(local_path(teacher)).is_file():  # a single-file teacher: as wadi merge, a single file or a pipeline folder
        if students.read_spec(adapter).kind != "lorad":
            raise ValueError("--export-merged of a single-file teacher needs a LoRaD student; merge others into a "
                             "diffusers folder of the teacher")
        return merge_checkpoint(open_checkpoint(teacher, backbone), [(adapter, 1.0)], out, "auto", overwrite,
                                progress=False)
    from .models import load_components

    components = load_components(teacher, backbone=backbone)
    students.apply_adapter_file(components.unet, adapter)
    network = students.plain_model(components.unet)
    part = "transformer" if is_dit_folder(teacher) else "unet"
    with fileio.atomic_dir(out, overwrite) as tmp:
        shutil.copytree(teacher, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(part))
        network.save_pretrained(tmp / part)
        # diffusers' own class name (not our wrapper's: PixArt's eps half, SDXL's packed text), so that
        # diffusers' pipelines load the folder
        config = json.loads((tmp / part / "config.json").read_text())
        config["_class_name"] = next(c.__name__ for c in type(network).__mro__ if c.__module__.startswith("diffusers"))
        (tmp / part / "config.json").write_text(json.dumps(config, indent=1))
    return Path(out)
