"""Writing outputs safely: temporary name, then rename; never overwrite without being asked."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class OutputExistsError(FileExistsError):
    pass


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it, "
                                "or choose another output path")
    if not path.parent.exists():
        raise FileNotFoundError(f"the folder {path.parent} for the output {path.name} does not exist; create it first")
    return path


@contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``."""
    path = check_output(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path``."""
    path = check_output(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_file(path, overwrite) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))
    return Path(path)


def refuse_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle file; {what} are read only from .safetensors because pickle "
                         "can run code. Convert it to safetensors first (e.g. with safetensors.torch.save_file).")
