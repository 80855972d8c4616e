"""Every sampler answers one call, ``sampler(components, prompts, seeds, progress) -> uint8 [n, H, W, 3]``, in
the spirit of k-diffusion's uniform sampler contract: a sampler is a small frozen record of its settings, so
any of them can be handed to any place that draws images (the CLI, the web UI, evaluation, distillation's
sample grids)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from torch import nn

from . import highres, onestep
from .controlnet import ControlledUNet, check_fits, control_tensor
from .latents import image_size
from .multistep import sample


class Sampler(Protocol):
    def __call__(self, components, prompts: Sequence[str], seeds: Sequence[int], progress: bool = False
                 ) -> np.ndarray: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class MultiStep:
    """The teacher's sampler: ``steps`` of ``scheduler`` (ddim, euler) with classifier-free ``guidance``."""

    steps: int = 25
    guidance: float = 3.0
    scheduler: str = "ddim"
    batch_size: int = 32

    def __call__(self, components, prompts, seeds, progress=False) -> np.ndarray:
        return sample(components, prompts, seeds, self.steps, self.guidance, self.scheduler, self.batch_size,
                      progress=progress)

    def describe(self) -> str:
        return f"{self.scheduler}, {self.steps} steps, guidance {self.guidance}"


@dataclass(frozen=True)
class OneStep:
    """A student's single step at t = T-1; ``scale`` > 1 draws above the training resolution."""

    batch_size: int = 64
    scale: int = 1

    def __call__(self, components, prompts, seeds, progress=False) -> np.ndarray:
        return onestep.generate(components, prompts, seeds, self.batch_size, progress=progress, scale=self.scale)

    def describe(self) -> str:
        return "one step" + (f" at {self.scale}x the size" if self.scale != 1 else "")


@dataclass(frozen=True, eq=False)
class Controlled:
    """``inner`` (one step or multi-step) under a ControlNet: one control image ``uint8 [H, W, 3]`` per prompt."""

    controlnet: nn.Module
    control: np.ndarray
    inner: Sampler = OneStep()
    scale: float = 1.0
    batch_size: int = 32

    def __call__(self, components, prompts, seeds, progress=False) -> np.ndarray:
        prompts, seeds = list(prompts), list(seeds)
        if len(self.control) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(self.control)} control images; give one per prompt")
        check_fits(self.controlnet, components.unet)
        control = control_tensor(np.asarray(self.control), image_size(components))
        out = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            unet = ControlledUNet(components.unet, self.controlnet, control[start:stop], self.scale)
            out.append(self.inner(dataclasses.replace(components, unet=unet), prompts[start:stop], seeds[start:stop],
                                  progress))
        return np.concatenate(out)

    def describe(self) -> str:
        return f"{self.inner.describe()} with ControlNet (scale {self.scale})"


@dataclass(frozen=True, eq=False)
class TwoStage:
    """Above the training resolution: the student's one step at the base size, upscaled ``scale`` times, then
    ``refiner`` (the multi-step teacher's components) re-noises ``strength`` of its ``steps`` and refines."""

    refiner: object
    scale: int = 2
    strength: float = 0.3
    steps: int = 15
    guidance: float = 3.0

    def __call__(self, components, prompts, seeds, progress=False) -> np.ndarray:
        return highres.two_stage(components, self.refiner, prompts, seeds, self.scale, self.strength, self.steps,
                                 self.guidance, progress)

    def describe(self) -> str:
        return (f"one step, upscaled {self.scale}x and refined by the teacher ({round(self.strength * self.steps)} "
                f"of {self.steps} DDIM steps, guidance {self.guidance})")
