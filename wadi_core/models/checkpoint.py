"""Where a model's weights are: a diffusers pipeline folder, a diffusers model folder, or a
single ``.safetensors`` checkpoint in the original LDM layout (ComfyUI / A1111).

:class:`Checkpoint` presents the backbone (UNet or DiT) of any of them under diffusers weight
names, reading shapes from the safetensors headers only, so that adapters can be checked and
merged without building the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import fileio
from . import keys
from .families import family_from_weight_shapes
from .hub import local_path

WEIGHTS = "diffusion_pytorch_model"
VARIANTS = (None, "fp16", "bf16")  # diffusers' and transformers' weights variants (model.fp16.safetensors)


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
        return read_tensor(*(self.replaced.get(name) or self.stored[name]))

    def tensors(self) -> StoredTensors:
        """The backbone's tensors by diffusers name, read when asked for."""
        return StoredTensors({**self.stored, **self.replaced})

    @property
    def label(self) -> str:
        return f"{self.path} with {self.backbone_file}" if self.backbone_file else str(self.path)


def read_tensor(file: Path, key: str) -> torch.Tensor:
    """One tensor; the file is opened for it alone (a handle kept open would keep every page read so far mapped)."""
    from safetensors import safe_open
    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(key)


class StoredTensors(Mapping):
    """Tensors by name from ``{name: (safetensors file, key)}``, each read only when asked for; a third item in a
    value, a function, turns the stored tensor into the one named (a slice of a fused tensor, a transpose)."""

    def __init__(self, where: Mapping[str, tuple]):
        self.where = where

    def __getitem__(self, name: str) -> torch.Tensor:
        file, key, *convert = self.where[name]
        tensor = read_tensor(file, key)
        return convert[0](tensor) if convert and convert[0] else tensor

    def __contains__(self, name) -> bool:  # (Mapping's own would read the tensor)
        return name in self.where

    def __iter__(self):
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)


def load_weights(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str, source: str,
                 dtype: torch.dtype | None = None) -> None:
    """Give ``module`` (built on the meta device, or with weights to be replaced) ``tensors`` under its own names,
    one at a time, each cast into a tensor made before it is read (floating-point ones in ``dtype`` where given): a
    float32 model read from an fp16 file never holds the fp16 copy beside it, nor leaves the allocator holes too
    small for the next float32 tensor. ``source`` starts the error for a missing weight (e.g. "X is not a complete
    SD1.x checkpoint")."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"{source}: the {what} weight '{missing[0]}' (and {len(missing) - 1} more) is missing")
    state = {}
    for name, target in own.items():
        if name in tensors:
            kind = dtype if dtype is not None and target.is_floating_point() else target.dtype
            state[name] = torch.empty(target.shape, dtype=kind)
            state[name].copy_(tensors[name].reshape(target.shape))
    module.load_state_dict(state, strict=False, assign=True)
    left = next((n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta), None)
    if left:  # a tensor no file holds and no initialiser filled (built on the meta device)
        raise CheckpointError(f"{source}: the {what} weight '{left}' is missing")


def read_model_folder(cls, folder: str | os.PathLike, dtype: torch.dtype,
                      backbone: str | os.PathLike | None = None) -> torch.nn.Module:
    """A diffusers model (``cls``: a UNet class) from its folder: built from config.json on the meta device, its
    weights read tensor by tensor in ``dtype``. (diffusers' ``from_pretrained`` reads the whole file first, then
    casts: for SD1.5's float32 UNet read as bf16 that is 3.4 GB more at once.)

    With ``backbone`` (a state dict of the whole network: the authors' released one-step UNets) the weights are that
    file's, checked strictly (the same names and shapes, no NaN/Inf); the folder's own are not read, nor need they be
    there."""
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(str(folder)))
    if backbone is None:
        load_weights(model, open_checkpoint(folder).tensors(), type(model).__name__,
                     f"{folder} is not a complete diffusers model folder", dtype)
        return model
    source = backbone_file(backbone)
    check_same_tensors({k: tuple(v.shape) for k, v in model.state_dict().items()}, source.shapes,
                       f"the backbone file {backbone}", f"the {type(model).__name__} of {Path(folder).parent}")
    load_weights(model, source.tensors(), type(model).__name__, f"the backbone file {backbone}", dtype)
    check_finite(model.state_dict().items(), backbone)
    return model


def load_backbone(model: torch.nn.Module, file: str | os.PathLike, label: str) -> None:
    """Replace every weight of ``model`` with ``file``'s (same names and shapes, else one error naming the first
    difference; NaN/Inf refused), one tensor at a time, each cast to the model's type. A damaged tensor stops it
    part-way: the model is then not to be used (``load_components`` never returns it)."""
    source = backbone_file(file)
    own = model.state_dict()
    check_same_tensors({k: tuple(v.shape) for k, v in own.items()}, source.shapes, f"the backbone file {file}", label)
    with torch.no_grad():
        for name, target in own.items():
            tensor = source.read(name)
            check_finite([(name, tensor)], file)
            target.copy_(tensor)


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], backbone: str | os.PathLike) -> None:
    """Refuse a backbone file one of whose ``(name, tensor)`` holds NaN or Inf."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"the backbone file {backbone}: '{name}' holds NaN or Inf values; the file is "
                                  "damaged")


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated — "
                              "download or convert it again") from None


def with_variant(name: str, variant: str | None) -> str:
    """The name diffusers and transformers give a weights file saved in ``variant``: the variant before the last
    suffix (``model.safetensors`` -> ``model.fp16.safetensors``, ``model.safetensors.index.json`` ->
    ``model.safetensors.index.fp16.json``)."""
    if not variant:
        return name
    stem, suffix = name.rsplit(".", 1)
    return f"{stem}.{variant}.{suffix}"


def weights_file(folder: Path, weights: str) -> tuple[Path, str | None] | None:
    """Where ``folder`` keeps ``weights`` (e.g. ``model.safetensors``), and in which variant: the file itself or its
    shards' index, in the first of :data:`VARIANTS` it holds (the plain name first, as ``from_pretrained`` without a
    variant reads); None when it holds none."""
    for variant in VARIANTS:
        for name in (weights, f"{weights}.index.json"):
            if (folder / with_variant(name, variant)).is_file():
                return folder / with_variant(name, variant), variant
    return None


def _model_weight_files(folder: Path) -> list[Path]:
    found = weights_file(folder, f"{WEIGHTS}.safetensors")
    if found and found[0].suffix == ".safetensors":
        return [found[0]]
    if found:  # a sharded model's index
        index = found[0]
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} lists the shard {folder / missing[0]}, which is missing; "
                                  "download the whole model folder again")
        return [folder / s for s in shards]
    if any(folder.glob(f"{WEIGHTS}*.bin")):
        fileio.refuse_pickle(next(folder.glob(f"{WEIGHTS}*.bin")), "model weights")
    raise CheckpointError(f"{folder} has no {WEIGHTS}.safetensors (nor its fp16 or bf16 variant, nor a sharded "
                          "index); the model folder is incomplete")


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
    backbone's weights come from that file instead (:func:`replace_backbone`). A Hub id is read from the Hub's
    cache (:mod:`.hub`)."""
    ckpt = _open(Path(local_path(path)).expanduser())
    return replace_backbone(ckpt, backbone) if backbone else ckpt


def backbone_file(path: str | os.PathLike) -> Checkpoint:
    """A state dict of a whole UNet or DiT (diffusers names, as the authors release their one-step models), or
    a single-file checkpoint's UNet, indexed like a checkpoint; a file on the Hub is read from the Hub's cache."""
    path = Path(local_path(path)).expanduser()
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
