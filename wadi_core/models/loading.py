"""One call that loads any model wadi takes, whatever its layout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .components import Components, is_dit_folder, is_sdxl_folder, load_sd_folder
from .hub import local_path


def load_components(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
                    backbone: str | os.PathLike | None = None, unet_dtype: torch.dtype | None = None) -> Components:
    """A diffusers SD-style folder (a real SD1.x/2.x or SDXL model, or the embedded shapes model when ``path`` is None),
    a PixArt-style DiT folder, a single-file SD1.x, SD2.x or SDXL checkpoint, or the Hub id of a diffusers pipeline
    (:mod:`.hub`); with ``backbone``, a state dict of the whole
    UNet / transformer (the authors' released one-step models) replaces the model's, checked strictly.

    ``unet_dtype`` (default: ``dtype``) is the UNet's / transformer's. A UNet is read in that type one tensor at a
    time, so a bf16 UNet never passes through a float32 copy of itself (SD1.5: 3.4 GB); a DiT is read by diffusers
    (its position table is not in its file) and cast as it loads."""
    if path is None:
        from ..shapes.components import MODEL_DIR
        path = MODEL_DIR
    path = local_path(path)
    if Path(path).expanduser().is_file():
        from .single_file import load_single_file_components
        components = load_single_file_components(path, dtype, unet_dtype)
    elif is_sdxl_folder(path):
        from .sdxl import load_sdxl_folder
        components = load_sdxl_folder(path, dtype, unet_dtype)
    elif is_dit_folder(path):
        from .dit import load_dit_components  # diffusers' PixArt: imported only when needed
        components = load_dit_components(path, dtype, unet_dtype)
    else:
        components = load_sd_folder(path, dtype, unet_dtype)
    if backbone:
        load_backbone(components.unet, backbone, f"the {type(components.unet).__name__} of {path}")
    return components


def load_backbone(model: torch.nn.Module, file: str | os.PathLike, label: str) -> None:
    """Replace every weight of ``model`` with ``file``'s (same names and shapes, else one error naming the first
    difference; NaN/Inf refused), one tensor at a time, each cast to the model's type. A damaged tensor stops it
    part-way: the model is then not to be used (``load_components`` never returns it)."""
    from .checkpoint import CheckpointError, backbone_file, check_same_tensors

    source = backbone_file(file)
    own = model.state_dict()
    check_same_tensors({k: tuple(v.shape) for k, v in own.items()}, source.shapes, f"the backbone file {file}", label)
    with torch.no_grad():
        for name, target in own.items():
            tensor = source.read(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"the backbone file {file}: '{name}' holds NaN or Inf values; the file is "
                                      "damaged")
            target.copy_(tensor)
