"""DreamBooth with a LoRaD (or LoRA, or full) adapter: teach a model a subject from a few images.

The instance images are captioned with a rare identifier and the class noun ("a sks square");
*prior preservation* trains on images of the plain class ("a square") at the same time, so the
class keeps its old look. Class images come from a folder or are generated, by default with the
one-step student (about 20x cheaper than the teacher's 25 steps).

``base="teacher"`` trains on the teacher's UNet; ``base="student"`` on the student's (its adapter
merged first). Either way the result is an ordinary adapter file: a LoRaD one loads in ComfyUI's
``WaDi Load LoRaD`` and stacks onto the student, since rotations of the same weight pairs add.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import students
from .models.vae import encode

LEARNING_RATES = {"lorad": 5e-3, "lora": 1e-3, "dora": 1e-3, "full": 1e-4}


@dataclass(frozen=True)
class DreamBoothConfig:
    instance_prompt: str = "an orange sks square"
    class_prompt: str = "an orange square"
    adapter: students.AdapterSpec = students.AdapterSpec("lorad", 8, "unet-student")
    steps: int = 300
    batch_size: int = 4
    lr: float | None = None  # None: LEARNING_RATES[adapter.kind]
    prior_weight: float = 1.0
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else LEARNING_RATES[self.adapter.kind]


def check_prompts(config: DreamBoothConfig) -> None:
    if not config.instance_prompt.strip():
        raise ValueError("the instance prompt is empty; give one with the identifier and the class, e.g. 'a sks dog'")
    if config.prior_weight > 0 and not config.class_prompt.strip():
        raise ValueError("prior preservation needs a class prompt (e.g. 'a dog'); or set the prior weight to 0")
    if config.class_prompt.strip() and config.instance_prompt.strip() == config.class_prompt.strip():
        raise ValueError("the instance prompt equals the class prompt; add a rare identifier (e.g. 'a sks dog')")


def prepare_unet(components, base_student: str | None = None) -> None:
    """Make ``components.unet`` the network to fine-tune: the teacher's, or the student's merged into it."""
    if base_student:
        students.apply_adapter_file(components.unet, base_student)
        components.unet = students.plain_model(components.unet)


def train_subject(components, instance_images: np.ndarray, class_images: np.ndarray | None,
                  config: DreamBoothConfig, progress: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Fine-tune ``components.unet`` with ``config.adapter`` on the subject; the adapter stays attached."""
    check_prompts(config)
    if len(instance_images) == 0:
        raise ValueError("no instance images; give 3-8 images of the subject")
    prior = config.prior_weight > 0
    if prior and (class_images is None or len(class_images) == 0):
        raise ValueError("prior preservation needs class images; give a class folder or let them be generated")
    unet, scheduler = components.unet, components.scheduler
    torch.manual_seed(config.seed)
    params = students.add_adapter(unet, config.adapter)
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    with torch.no_grad():
        texts = components.encode_prompts([config.instance_prompt] + ([config.class_prompt] if prior else []))
    history = []
    for step in range(config.steps):
        batches = [(instance_images, texts[0])] + ([(class_images, texts[1])] if prior else [])
        losses = []
        for images, text in batches:
            pick = rng.integers(len(images), size=config.batch_size)
            latents = encode(components, images[pick], generator)
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pick),), generator=generator)
            eps = unet(scheduler.add_noise(latents, noise, t), t, text.expand(len(pick), -1, -1)).sample
            losses.append(F.mse_loss(eps.float(), noise))
        loss = losses[0] + (config.prior_weight * losses[1] if prior else 0.0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        record = {"step": step + 1, "instance": losses[0].item(), "prior": losses[1].item() if prior else 0.0}
        history.append(record)
        if progress:
            progress(step + 1, record)
    unet.eval().requires_grad_(False)
    return history
