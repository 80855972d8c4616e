"""Where a model's weights are: a diffusers pipeline folder, a diffusers model folder, or a
single ``.safetensors`` checkpoint in the original LDM layout (ComfyUI / A1111).

:class:`Checkpoint` presents the backbone (UNet or DiT) of any of them under diffusers weight
names, reading shapes from the safetensors headers only, so that adapters can be checked and
merged without building the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import fileio
from . import keys
from .families import family_from_weight_shapes

WEIGHTS = "diffusion_pytorch_model"


class CheckpointError(ValueError):
    """A base model path that cannot be used; the message names the missing or wrong file."""


@dataclass
class Checkpoint:
    path: Path
    kind: str  # "diffusers-pipeline" | "diffusers-model" | "single-file"
    backbone: str  # "unet" | "transformer"
    model_dir: Path | None  # the diffusers folder of the backbone
    stored: dict[str, tuple[Path, str]] = field(default_factory=dict)  # diffusers name -> (file, stored key)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # diffusers name -> shape
    # a replacement backbone (the authors' released UNets): diffusers name -> (its file, its key); read instead of
    # ``stored``, which keeps the names the base's own files use (a merge writes the base's layout)
    replaced: dict[str, tuple[Path, str]] = field(default_factory=dict)
    backbone_file: Path | None = None

    @property
    def family(self) -> str:
        return family_from_weight_shapes(self.shapes)

    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{module name: weight shape}`` of every layer an adapter could target."""
        return {n[: -len(".weight")]: s for n, s in self.shapes.items() if n.endswith(".weight") and len(s) >= 2}

    def files(self) -> list[Path]:
        return sorted({f for f, _ in self.stored.values()})

    def read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open
        file, key = self.replaced.get(name) or self.stored[name]
        with safe_open(str(file), framework="pt") as f:
            return f.get_tensor(key)

    @property
    def label(self) -> str:
        return f"{self.path} with {self.backbone_file}" if self.backbone_file else str(self.path)


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated — "
                              "download or convert it again") from None


def _model_weight_files(folder: Path) -> list[Path]:
    for variant in ("", ".fp16", ".bf16"):
        single = folder / f"{WEIGHTS}{variant}.safetensors"
        if single.is_file():
            return [single]
        index = folder / f"{WEIGHTS}{variant}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(f"{index} lists the shard {folder / missing[0]}, which is missing; "
                                      "download the whole model folder again")
            return [folder / s for s in shards]
    if any(folder.glob(f"{WEIGHTS}*.bin")):
        fileio.refuse_pickle(next(folder.glob(f"{WEIGHTS}*.bin")), "model weights")
    raise CheckpointError(f"{folder} has no {WEIGHTS}.safetensors (nor a sharded index); "
                          "the model folder is incomplete")


def _open_model_dir(path: Path, folder: Path, kind: str) -> Checkpoint:
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder} has no config.json; the diffusers model folder is incomplete")
    class_name = json.loads(config.read_text()).get("_class_name", "")
    backbone = "transformer" if "Transformer" in class_name else "unet"
    ckpt = Checkpoint(path, kind, backbone, folder)
    for file in _model_weight_files(folder):
        for key, shape in _header(file).items():
            ckpt.stored[key] = (file, key)
            ckpt.shapes[key] = shape
    return ckpt


def _open_single_file(path: Path) -> Checkpoint:
    header = _header(path)
    ldm = [k for k in header if k.startswith(keys.LDM_UNET)]
    if ldm:
        layout = keys.UNetLayout.from_ldm_keys(ldm)
        ckpt = Checkpoint(path, "single-file", "unet", None)
        for key in ldm:
            name = keys.unet_from_ldm(key[len(keys.LDM_UNET):], layout)
            ckpt.stored[name] = (path, key)
            ckpt.shapes[name] = header[key]
        return ckpt
    if any(k.startswith("down_blocks.") for k in header) or any(k.startswith("transformer_blocks.") for k in header):
        backbone = "unet" if any(k.startswith("down_blocks.") for k in header) else "transformer"
        ckpt = Checkpoint(path, "single-file", backbone, None)
        for key, shape in header.items():
            ckpt.stored[key] = (path, key)
            ckpt.shapes[key] = shape
        return ckpt
    raise CheckpointError(f"{path} holds no Stable Diffusion UNet (no '{keys.LDM_UNET}*' keys) and no "
                          "diffusers-named UNet or DiT weights; pass a model checkpoint, not a VAE, LoRA or embedding")


def family_of_path(path: str | os.PathLike) -> str:
    """The family of the model at ``path`` from its weights' names and shapes (safetensors headers only): a copied
    or renamed model keeps its family."""
    return open_checkpoint(path).family


def open_checkpoint(path: str | os.PathLike, backbone: str | os.PathLike | None = None) -> Checkpoint:
    """Recognise a base model path and index its backbone weights (no tensors are loaded); with ``backbone``, the
    backbone's weights come from that file instead (:func:`replace_backbone`)."""
    ckpt = _open(Path(path).expanduser())
    return replace_backbone(ckpt, backbone) if backbone else ckpt


def backbone_file(path: str | os.PathLike) -> Checkpoint:
    """A state dict of a whole UNet or DiT (diffusers names, as the authors release their one-step models), or
    a single-file checkpoint's UNet, indexed like a checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"the backbone file {path} does not exist; give the .safetensors of a whole UNet or "
                              "transformer (e.g. rotated_unet-sdv1-5.safetensors)")
    fileio.refuse_pickle(path, "backbone weights")
    return _open_single_file(path)


def replace_backbone(ckpt: Checkpoint, file: str | os.PathLike) -> Checkpoint:
    """``ckpt`` whose backbone is read from ``file``, checked strictly against it: the same tensor names and shapes
    (the error names the first that differs), as ``load_state_dict(strict=True)`` would."""
    other = backbone_file(file)
    check_same_tensors(ckpt.shapes, other.shapes, f"the backbone file {file}", f"the {ckpt.backbone} of {ckpt.path}")
    return Checkpoint(ckpt.path, ckpt.kind, ckpt.backbone, ckpt.model_dir, ckpt.stored, ckpt.shapes, other.stored,
                      Path(file).expanduser())


def check_same_tensors(want: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], got_label: str,
                       want_label: str) -> None:
    missing = next((name for name in want if name not in got), None)
    if missing:
        raise CheckpointError(f"{got_label} has no '{missing}' ({len(want)} tensors expected, it holds {len(got)}); "
                              f"it is not a state dict of {want_label}")
    unexpected = next((name for name in got if name not in want), None)
    if unexpected:
        raise CheckpointError(f"{got_label} holds '{unexpected}', which {want_label} does not have; it was made for "
                              "another architecture")
    for name, shape in want.items():
        if tuple(got[name]) != tuple(shape):
            raise CheckpointError(f"{got_label}: '{name}' has shape {tuple(got[name])} but {want_label} needs "
                                  f"{tuple(shape)}; it was made for another architecture")


def _open(path: Path) -> Checkpoint:
    if not path.exists():
        raise CheckpointError(f"base model {path} does not exist; give a diffusers folder or a .safetensors checkpoint")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            for backbone in ("unet", "transformer"):
                if (path / backbone).is_dir():
                    return _open_model_dir(path, path / backbone, "diffusers-pipeline")
            raise CheckpointError(f"{path} is a diffusers pipeline without a unet/ or transformer/ folder")
        if (path / "config.json").is_file():
            return _open_model_dir(path, path, "diffusers-model")
        raise CheckpointError(f"{path} is neither a diffusers pipeline (model_index.json) nor a diffusers model "
                              "folder (config.json)")
    fileio.refuse_pickle(path, "checkpoints")
    return _open_single_file(path)
