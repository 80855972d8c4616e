"""One call that loads any model wadi takes, whatever its layout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import load_backbone
from .components import Components, is_dit_folder, is_sdxl_folder, load_sd_folder
from .hub import local_path


def load_components(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
                    backbone: str | os.PathLike | None = None, unet_dtype: torch.dtype | None = None) -> Components:
    """A diffusers SD-style folder (a real SD1.x/2.x or SDXL model, or the embedded shapes model when ``path`` is None),
    a PixArt-style DiT folder, a single-file SD1.x, SD2.x or SDXL checkpoint, or the Hub id of a diffusers pipeline
    (:mod:`.hub`); with ``backbone``, a state dict of the whole
    UNet / transformer (the authors' released one-step models) replaces the model's, checked strictly: a folder's own
    backbone weights are then not read (and a Hub id's not downloaded).

    ``unet_dtype`` (default: ``dtype``) is the UNet's / transformer's. A UNet is read in that type one tensor at a
    time, so a bf16 UNet never passes through a float32 copy of itself (SD1.5: 3.4 GB); a DiT is read by diffusers
    (its position table is not in its file) and cast as it loads."""
    if path is None:
        from ..shapes.components import MODEL_DIR
        path = MODEL_DIR
    path = local_path(path, backbone_weights=not backbone)  # (a replacement's folder needs only the config)
    if Path(path).expanduser().is_file():
        from .single_file import load_single_file_components
        components = load_single_file_components(path, dtype, unet_dtype)
        if backbone:
            load_backbone(components.unet, backbone, f"the {type(components.unet).__name__} of {path}")
        return components
    if is_sdxl_folder(path):
        from .sdxl import load_sdxl_folder
        return load_sdxl_folder(path, dtype, unet_dtype, backbone)
    if is_dit_folder(path):
        from .dit import load_dit_components  # diffusers' PixArt: imported only when needed
        return load_dit_components(path, dtype, unet_dtype, backbone)
    return load_sd_folder(path, dtype, unet_dtype, backbone)
