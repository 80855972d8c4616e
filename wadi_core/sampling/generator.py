"""A model ready to draw: its components with adapters applied at their strengths and learned tokens added."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.components import Components
from .samplers import MultiStep, OneStep, Sampler


@dataclass
class Generator:
    """``generator(prompts, seeds, sampler)`` draws ``uint8 [n, H, W, 3]`` images with any sampler.

    ``one_step`` says whether the backbone is a one-step student (a distilled adapter applied, or a merged
    student), which decides :meth:`default_sampler`."""

    components: Components
    one_step: bool = False
    adapters: list[tuple[Path, float]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], sampler: Sampler | None = None,
                 progress: bool = False) -> np.ndarray:
        return (sampler or self.default_sampler())(self.components, list(prompts), list(seeds), progress)

    def default_sampler(self, steps: int = 25, guidance: float = 3.0, scheduler: str = "ddim",
                        batch_size: int = 32) -> Sampler:
        """One step for a student, else the teacher's multi-step sampler with these settings."""
        if self.one_step:
            return OneStep(batch_size=batch_size)
        return MultiStep(steps=steps, guidance=guidance, scheduler=scheduler, batch_size=batch_size)


def build_generator(model: str | os.PathLike | Components | None = None,
                    adapters: Sequence[tuple[str | os.PathLike, float]] = (),
                    embeddings: Sequence[str | os.PathLike] = (), one_step: bool | None = None,
                    backbone: str | os.PathLike | None = None, device=None, dtype=None) -> Generator:
    """Load ``model`` (a path, loaded components, or None for the embedded model; ``backbone``: a state dict
    that replaces its whole UNet or DiT), apply each adapter file at its strength (LoRaD adapters stack, their
    angles add) and add each learned token. ``one_step`` defaults to "an adapter is given" (a distilled
    student); pass it for a merged or released student, or a subject adapter. ``device`` (``"cuda"``, ``"auto"``,
    a ``torch.device``, ...) moves the model there once everything is applied; None leaves it where it is.
    ``dtype`` is the backbone's type (a torch dtype, or ``"auto"``, ``"fp16"``, ...: see
    :func:`wadi_core.devices.resolve_dtype`; None: float32), read in that type; text encoders and VAE stay float32
    (SDXL's VAE overflows in float16), and the samplers cast between them."""
    from .. import students
    from ..devices import resolve, resolve_dtype
    from ..models import load_components
    from ..models.embeddings import load_embedding

    if isinstance(device, str):
        device = resolve(device)  # a device this machine lacks is refused before the model loads
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    components = model if isinstance(model, Components) else load_components(model, backbone=backbone,
                                                                              unet_dtype=dtype)
    tokens = [load_embedding(components, path) for path in embeddings]
    applied = []
    for i, (path, strength) in enumerate(adapters):
        students.apply_adapter_file(components.unet, path, name=f"adapter{i}", strength=strength)
        applied.append((Path(path), float(strength)))
    if device is not None:
        components.to(device)
    return Generator(components, bool(applied) if one_step is None else one_step, applied, tokens)
