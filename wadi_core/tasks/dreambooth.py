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

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import fileio, metrics, students
from ..images import labelled_grid, read_image_folder
from ..models import family_of_path
from ..models.vae import encode
from ..plots import loss_curves
from ..progress import QUIET, Progress
from ..sampling import MultiStep, OneStep, build_generator, image_size
from ..sampling.prediction import denoising_target

ADAPTER_FILE = "subject.safetensors"

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
            # drawn on the CPU (the same numbers on every device), then moved to the model's
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(pick),), generator=generator).to(
                latents.device)
            out = unet(scheduler.add_noise(latents, noise, t), t, text.expand(len(pick), -1, -1)).sample
            losses.append(F.mse_loss(out.float(), denoising_target(scheduler, latents, noise, t)))
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


# ----- a whole run: exemplars, class images, training, the adapter file and its pictures

@dataclass
class SubjectRun:
    """A finished training: where the adapter is, what was trained and how long it took."""

    adapter: Path
    label: str
    trainable: int
    minutes: float


def class_images(model, config: DreamBoothConfig, count: int, folder: Path, class_dir=None, student=None,
                 size: int = 0, progress: Progress = QUIET, backbone=None, device=None) -> np.ndarray | None:
    """The class folder's images, or ``count`` generated (in one step with ``student``) and saved into ``folder``."""
    if config.prior_weight <= 0:
        return None
    if class_dir:
        return read_image_folder(class_dir, size)[1]
    progress.note(f"generating {count} class images ('{config.class_prompt}')")
    seeds = list(range(10_000, 10_000 + count))
    generator = build_generator(model, [(student, 1.0)] if student else [], backbone=backbone, device=device)
    sampler = OneStep() if student else MultiStep()
    images = generator([config.class_prompt] * count, seeds, sampler, progress=progress.bars)
    folder.mkdir(parents=True)
    from PIL import Image
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return images


def train(model: str | os.PathLike, out: str | os.PathLike, config: DreamBoothConfig, instance_dir=None,
          count: int = 6, class_dir=None, num_class_images: int = 64, student=None, on: str = "teacher",
          overwrite: bool = False, progress: Progress = QUIET, backbone=None, device=None) -> SubjectRun:
    """Teach ``model`` (or, with ``on="student"``, its ``student``) the subject of ``instance_dir`` (the embedded
    world renders its own subject when none is given) and write ``out``: the adapter, history.json, loss.png and
    samples.png (instance images beside the trained model's). Class images, training and samples run on
    ``device`` (as ``build_generator`` takes it; None: the CPU), in float32."""
    from ..shapes import novel

    if on == "student" and not student:
        raise ValueError("--on student needs --student (the distilled student adapter)")
    check_prompts(config)
    with fileio.claim(out, overwrite) as out:
        generator = build_generator(model, backbone=backbone, device=device)
        components, size = generator.components, image_size(generator.components)
        with fileio.atomic_dir(out, overwrite) as tmp:
            if instance_dir:
                instance = read_image_folder(instance_dir, size)[1]
            else:
                if family_of_path(model) != "shapes":
                    raise ValueError("a real model needs --instance-dir (a folder of 3-8 subject images)")
                folder = novel.write_subject_exemplars(tmp / "instance", count, config.seed)
                instance = read_image_folder(folder, size)[1]
            classes = class_images(model, config, num_class_images, tmp / "class_images", class_dir, student, size,
                                   progress, backbone, device)
            prepare_unet(components, student if on == "student" else None)
            progress.note("training")
            start = time.perf_counter()
            with progress.steps(config.steps, f"DreamBooth ({config.adapter.label()})", ("instance", "prior")) as step:
                history = train_subject(components, instance, classes, config, step)
            minutes = (time.perf_counter() - start) / 60
            extra = {"wadi.dreambooth.instance_prompt": config.instance_prompt, "wadi.dreambooth.on": on,
                     "wadi.dreambooth.student": str(student or "")}
            students.save_adapter_file(components.unet, config.adapter, tmp / ADAPTER_FILE, extra=extra)
            (tmp / "history.json").write_text(json.dumps(history))
            loss_curves({"instance": [h["instance"] for h in history], "prior": [h["prior"] for h in history]},
                        tmp / "loss.png", title=f"DreamBooth, {config.adapter.label()}")
            progress.note("drawing the sample grid")
            prompts = [config.instance_prompt] * 8 + ([config.class_prompt] * 8 if config.class_prompt else [])
            sampler = OneStep() if on == "student" else MultiStep()
            images = sampler(components, prompts, list(range(len(prompts))))
            labelled_grid(np.concatenate([instance[:8], images]),
                          ["instance"] * len(instance[:8]) + prompts).save(tmp / "samples.png")
    trainable = sum(v.numel() for v in students.trainable_state(components.unet, config.adapter).values())
    return SubjectRun(out / ADAPTER_FILE, config.adapter.label(), trainable, minutes)


# ----- evaluation on the embedded subject

def eval_prompts(count: int, seed: int) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Groups of ``(prompt, asked colour, asked position)``."""
    from ..shapes import novel
    from ..shapes.world import COLORS, POSITIONS, position_phrase

    rng = np.random.default_rng(seed)
    token, noun, own = novel.SUBJECT_TOKEN, novel.SUBJECT_CLASS, novel.SUBJECT_COLOR
    colors = [c for c in COLORS if c != novel.SUBJECT_COLOR]
    positions = list(POSITIONS)
    recolour = [colors[i] for i in rng.integers(len(colors), size=count)]
    placed = [positions[i] for i in rng.integers(len(positions), size=count)]
    return {
        "subject": [(novel.INSTANCE_PROMPT, own, None)] * count,
        "recoloured": [(f"a {c} {token} {noun}", c, None) for c in recolour],
        "placed": [(f"{novel.INSTANCE_PROMPT} {position_phrase(p)}", own, p) for p in placed],
        "class": [(f"a {c} {noun}", c, None) for c in recolour],
    }


def diversity(images: np.ndarray, feature_net) -> float:
    """Mean pairwise distance of the domain features: how different the images of one prompt are."""
    f = metrics.features(feature_net, images)
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


def evaluate(out: str | os.PathLike, model=None, adapter=None, student=None, count: int = 48, seed: int = 0,
             overwrite: bool = False, report: Callable[[str], None] = lambda text: None, backbone=None) -> dict:
    """Fidelity to the embedded subject (a diamond), colour and position adherence, class drift and diversity of
    ``adapter`` (without it: the base model, the baseline), in one step on ``student`` or with the teacher's 25
    DDIM steps; writes metrics.json and grid.png to ``out``. ``report`` gets one line per prompt group."""
    from ..shapes import novel
    from ..shapes.features import load_feature_net

    with fileio.claim(out, overwrite) as out:
        components = build_generator(model, backbone=backbone).components
        if student:
            prepare_unet(components, student)
        if adapter:
            students.apply_adapter_file(components.unet, adapter, name="subject")
        sampler = OneStep() if student else MultiStep()
        seeds = [seed + i for i in range(count)]
        net = load_feature_net()
        results, grid, labels = {}, [], []
        for group, items in eval_prompts(count, seed).items():
            prompts = [p for p, _, _ in items]
            images = sampler(components, prompts, seeds)
            checks = [novel.subject_checks(img, color, position) for img, (_, color, position) in zip(images, items)]
            row = {key: float(np.mean([c[key] for c in checks])) for key in checks[0]}
            if group == "subject":
                row["diversity"] = diversity(images, net)
            results[group] = row
            grid.append(images[:8])
            labels += prompts[:8]
            report(f"{group}: " + ", ".join(f"{k} {v:.1%}" if k != "diversity" else f"{k} {v:.2f}"
                                             for k, v in row.items()))
        exemplars = np.stack([np.asarray(novel.render(novel.subject_scene(np.random.default_rng([seed, i]))))
                              for i in range(count)])
        summary = {"adapter": str(adapter or "none"), "sampling": "one step on the student" if student else
                   "teacher, 25 DDIM steps, CFG 3", "images_per_group": count, "results": results,
                   "exemplar_diversity": diversity(exemplars, net)}
        with fileio.atomic_dir(out, overwrite) as tmp:
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=1))
            labelled_grid(np.concatenate(grid), labels).save(tmp / "grid.png")
    return summary
