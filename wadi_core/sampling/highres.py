"""Drawing above the training resolution with the one-step student.

Two routes: the student's single step on a larger latent (the UNet is convolutional), or the
two-stage route: one step at the base size, upscale the image, encode it, and let the multi-step
teacher refine it with a few image-to-image DDIM steps at low strength (SDEdit).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ..models.vae import encode
from . import onestep
from .multistep import sample


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic upscale of ``uint8 [n, H, W, 3]`` images."""
    side = images.shape[1] * scale
    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC)) for img in images])


def two_stage(student, teacher, prompts: Sequence[str], seeds: Sequence[int], scale: int = 2,
              strength: float = 0.3, steps: int = 15, guidance: float = 3.0, progress: bool = False) -> np.ndarray:
    """One step at the base size with ``student``, upscale by ``scale``, then ``teacher`` refines with the last
    ``strength * steps`` of ``steps`` DDIM steps (CFG ``guidance``)."""
    base = onestep.generate(student, prompts, seeds, progress=progress)
    latents = encode(teacher, upscale(base, scale))
    return sample(teacher, prompts, seeds, steps=steps, guidance=guidance, init_latents=latents, strength=strength,
                  progress=progress)
