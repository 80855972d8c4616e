"""One call that loads any model wadi takes, whatever its layout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .components import Components, is_dit_folder, load_sd_folder


def load_components(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Components:
    """A diffusers SD-style folder (a real SD1.x/2.x model, or the embedded shapes model when ``path`` is None),
    a PixArt-style DiT folder or a single-file SD1.x checkpoint."""
    if path is None:
        from ..shapes.components import MODEL_DIR
        path = MODEL_DIR
    if Path(path).expanduser().is_file():
        from .single_file import load_single_file_components
        return load_single_file_components(path, dtype)
    if is_dit_folder(path):
        from .dit import load_dit_components  # diffusers' PixArt: imported only when needed
        return load_dit_components(path, dtype)
    return load_sd_folder(path, dtype)
