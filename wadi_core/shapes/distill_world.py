"""The shapes world as a distillation sees it: its training prompts, the prompts of the sample grids, and renders
of any prompt of its grammar as the real images of DMD2's GAN term."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .dataset import prompts_of, render_batch
from .render import scene_for_prompt
from .world import NotJudgeable, parse_prompt

SAMPLE_PROMPTS = ("a red circle", "a large blue square", "a small green triangle at the top left",
                  "a yellow circle on the right", "a purple square left of an orange circle",
                  "a blue triangle above a red square", "an orange triangle", "a green circle below a yellow square")


class ShapesWorld:
    """``wadi_core.distill.world.World`` for the embedded teacher."""

    name = "the shapes world"
    has_images = True

    def training_prompts(self) -> list[str]:
        return [p.caption() for kind in ("single", "relation") for p in prompts_of("train", kind)]

    def sample_prompts(self) -> Sequence[str]:
        return SAMPLE_PROMPTS

    def can_render(self, prompt: str) -> bool:
        try:
            parse_prompt(prompt)
        except NotJudgeable:
            return False
        return True

    def render(self, prompts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
        return render_batch([scene_for_prompt(parse_prompt(p), rng) for p in prompts])
