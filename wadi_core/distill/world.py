"""What a teacher's world gives a distillation besides the teacher itself.

The trainer knows no world: it asks this small record for training prompts when the run has no prompt file,
for the prompts of its sample grids, and for real images of prompts when the GAN term is on. A real model's
world supplies nothing (prompts come from ``--prompts``, real images from ``--gan-images``); the embedded
shapes world supplies all three (``wadi_core.shapes.distill_world``).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class World(Protocol):
    name: str
    has_images: bool  # whether it can render real images of (some) prompts

    def training_prompts(self) -> list[str] | None:
        """The prompts to train on when the run has no prompt file; None: a prompt file is needed."""

    def sample_prompts(self) -> Sequence[str]:
        """The prompts of the sample grids; empty: the first 8 training prompts."""

    def can_render(self, prompt: str) -> bool:
        """Whether :meth:`render` can draw ``prompt`` (False everywhere: the world has no images of its own)."""

    def render(self, prompts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        """Real images of ``prompts``, ``uint8 [n, H, W, 3]``, for the GAN term."""


class PromptFileWorld:
    """A real model's world: prompts come from ``--prompts`` and real images from ``--gan-images``."""

    name = "a prompt file"
    has_images = False

    def training_prompts(self) -> list[str] | None:
        return None

    def sample_prompts(self) -> Sequence[str]:
        return ()

    def can_render(self, prompt: str) -> bool:
        return False

    def render(self, prompts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        raise ValueError("this world has no images of its own; give --gan-images")


def world_for_family(family: str) -> World:
    """The world of a teacher family: the shapes world for the embedded model, else nothing beyond the files."""
    if family == "shapes":
        from ..shapes.distill_world import ShapesWorld
        return ShapesWorld()
    return PromptFileWorld()
