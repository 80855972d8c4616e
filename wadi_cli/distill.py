"""``wadi distill``: WaDi distillation of a multi-step teacher into a one-step student
(shared/LORAD_SPEC.md section 4), on one CPU or under ``accelerate launch`` on many GPUs.

Three networks share the teacher's architecture: the frozen teacher, the student (teacher +
a trainable adapter, LoRaD by default) and the fake score model (teacher + its own adapter).
Each step trains the student on the VSD gradient, then the fake model on the student's images.

The :class:`Distiller` is used by the CLI, ``wadi demo`` and the web UI alike. Every step's
prompts and noise derive from (seed, step, process), so a run resumed from a checkpoint retraces
the uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from wadi_cli.distill_defaults import EMBEDDED_DEFAULTS, PAPER_DEFAULTS, default_lr
from wadi_core import fileio, gan, students, vsd
from wadi_core.models.dit import is_dit_folder
from wadi_core.ema import EMA
from wadi_core.models.families import family_of_model
from wadi_core.images import read_image_folder, side_by_side
from wadi_core.sampling.onestep import predict_x0
from wadi_core.plots import loss_curves
from wadi_core.prompts import read_prompts
from wadi_core.schedules import LR_SCHEDULES, lr_factor
from wadi_core.models import NonFiniteError, decode, encode
from wadi_core.sampling import check_eps_prediction, image_size, initial_latents, latent_shape, sample, sample_latents
from wadi_core.shapes import prompts_of
from wadi_core.shapes.dataset import render_batch
from wadi_core.shapes.render import scene_for_prompt
from wadi_core.shapes.world import NotJudgeable, parse_prompt
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR
from . import argtypes as A

CHECKPOINT = "checkpoint"
STATE_FILE = "state.pt"
SAMPLE_PROMPTS = ("a red circle", "a large blue square", "a small green triangle at the top left",
                  "a yellow circle on the right", "a purple square left of an orange circle",
                  "a blue triangle above a red square", "an orange triangle", "a green circle below a yellow square")

# Settings that must match to resume a checkpoint (the rest, like --steps, may change).
RESUME_KEYS = ("teacher", "prompts", "student", "student_rank", "student_preset", "fake", "fake_rank", "fake_preset",
               "guidance", "fake_guidance", "gradient_mode", "batch_size", "grad_accum",
               "seed", "ema", "null_prompt_share", "fake_updates", "regression_pairs",
               "regression_weight", "gan_weight", "gan_disc_weight", "gan_images", "gan_head_lr", "gan_features",
               "generator_t_min", "generator_t_max", "late_fraction", "late_t_max", "lr_schedule", "lr_warmup")
# Settings a resumed run may change, said in its log: the way out of a divergence is to resume the last good
# checkpoint at lower rates or without mixed precision.
RESUME_MAY_CHANGE = ("lr_student", "lr_fake", "mixed_precision")
# What a run writes into its folder; --overwrite removes these (and only these) before starting again.
RUN_FILES = ("checkpoint", "samples", "student.safetensors", "history.json", "loss.png", "wadi-distill")
# Regression pairs' seeds start here, away from the seeds of sample grids and evaluations.
PAIR_SEED_OFFSET = 10_000_000


@dataclass
class DistillConfig:
    out: str
    teacher: str = str(MODEL_DIR)
    prompts: str | None = None  # None: the training prompts of the embedded world
    student: str = "lorad"
    student_rank: int | None = None
    student_preset: str = "unet-student"
    fake: str = "lorad"
    fake_rank: int | None = None
    fake_preset: str = "unet-fake"
    steps: int | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    lr_student: float | None = None
    lr_fake: float | None = None
    # both networks' rates follow it, so the fake model's pace keeps its ratio to the student's
    lr_schedule: str = "constant"  # constant | cosine | linear (to 0 at the last step), after lr_warmup steps
    lr_warmup: int = 0
    guidance: float | None = None  # CFG on teacher and fake inside the VSD gradient
    # CFG of the fake model alone; None: the same as the teacher's (the paper's script). With CFG on both, the
    # gradient vanishes when the student matches the teacher's *unguided* distribution; with 1 here (DMD, DMD2)
    # its target is the guided one that the teacher's CFG samples come from.
    fake_guidance: float | None = None
    gradient_mode: str = "wadi"
    generator_t_min: int = vsd.GENERATOR_T_RANGE[0]  # the VSD gradient's timesteps (inclusive; the spec's range)
    generator_t_max: int = vsd.GENERATOR_T_RANGE[1]
    # the last late_fraction of the steps draw the gradient's timesteps up to late_t_max only: colour is decided at
    # low noise, layout at high noise, so a late low-noise phase refines colour once the layout is learnt
    late_fraction: float | None = None  # paper: 0 (off)
    late_t_max: int | None = None
    null_prompt_share: float = 0.1  # empty prompts in the fake model's loss
    fake_updates: int | None = None  # fake-model steps per student step (the paper: 1; DMD2: 5; embedded: 3)
    # DMD's regression loss (off by default, not part of WaDi): the teacher's multi-step latents for this many
    # (noise, prompt) pairs, made before training; a quarter of each batch is drawn from them and its one-step
    # x0 is also pulled toward the teacher's latent by regression_weight x MSE.
    regression_pairs: int = 0
    regression_weight: float = 0.25
    # DMD2's GAN term (off by default, not part of WaDi): a head on the fake model's middle features tells noised
    # real latents from noised student latents. Real images: renders of each batch's prompts for the embedded
    # world, else --gan-images (captions from same-named .txt files).
    gan_weight: float = 0.0  # the student's GAN loss weight
    gan_disc_weight: float = 0.01  # the discriminator loss weight inside the fake model's update
    gan_images: str | None = None
    gan_head_lr: float = 1e-3
    gan_features: str = "mid"  # mid: the UNet's mid block (DMD2); last: its last up block (full resolution)
    ema: float | None = None  # 0 = off; else the decay of an EMA of the student's trainable weights
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    sample_every: int = 100
    sample_guidance: float | None = None  # the teacher's CFG in the sample grid
    max_bad_steps: int = 10  # stop after this many consecutive non-finite losses
    export_merged: str | None = None
    overwrite: bool = False
    resume: bool = False
    report_to: str = "tensorboard"  # or "none"

    def resolved(self, embedded: bool) -> "DistillConfig":
        """A copy with every None replaced by the default for this teacher."""
        defaults = EMBEDDED_DEFAULTS if embedded else PAPER_DEFAULTS
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for role in ("student", "fake"):
            if values[f"lr_{role}"] is None:
                values[f"lr_{role}"] = default_lr(role, values[role], embedded)
        for key, value in defaults.items():
            if values[key] is None:
                values[key] = value
        if not values["late_fraction"]:  # no late phase: its top timestep means nothing
            if self.late_t_max is not None:
                raise ValueError("--late-t-max needs --late-fraction F (more than 0), the share of the last steps "
                                 "it applies to")
            values["late_t_max"] = None
        values["teacher"] = str(Path(values["teacher"]).expanduser().resolve())
        if is_dit_folder(values["teacher"]):  # a DiT teacher: the DiT versions of the default presets
            for key in ("student_preset", "fake_preset"):
                values[key] = values[key].replace("unet-", "dit-", 1) if values[key].startswith("unet-") \
                    else values[key]
        for key in ("prompts", "gan_images"):
            if values[key]:
                values[key] = str(Path(values[key]).expanduser().resolve())
        return DistillConfig(**values)

    def check(self) -> None:
        for f in fields(self):  # NaN passes every comparison below, so refuse non-finite numbers first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, not {value}")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("--batch-size and --grad-accum must be at least 1")
        if self.fake_updates < 1 or (self.fake_updates > 1 and self.grad_accum > 1):
            raise ValueError("--fake-updates must be at least 1, and more than 1 only without --grad-accum")
        if self.gradient_mode not in vsd.GRADIENT_MODES:
            raise ValueError(f"unknown --gradient-mode '{self.gradient_mode}'; choose one of: "
                             f"{', '.join(vsd.GRADIENT_MODES)}")
        if self.checkpoint_every < 0 or self.sample_every < 0:
            raise ValueError("--checkpoint-every and --sample-every must be 0 (off) or more")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, fp16 or bf16, not '{self.mixed_precision}'")
        for name in ("lr_student", "lr_fake", "gan_head_lr"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be more than 0 and at most 1 (typical: 1e-5 to "
                                 f"1e-2), not {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown --lr-schedule '{self.lr_schedule}'; choose one of: {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.lr_warmup < self.steps:
            raise ValueError(f"--lr-warmup-steps must be 0 or more and fewer than --steps ({self.steps}), "
                             f"got {self.lr_warmup}")
        if self.regression_pairs < 0 or self.regression_weight < 0:
            raise ValueError("--regression-pairs and --regression-weight must be 0 or more")
        if min(self.gan_weight, self.gan_disc_weight) < 0:
            raise ValueError("--gan-weight and --gan-disc-weight must be 0 or more")
        if not 0 <= self.null_prompt_share <= 1:
            raise ValueError(f"the null-prompt share must be between 0 and 1, not {self.null_prompt_share}")
        if self.max_bad_steps < 1:
            raise ValueError(f"--max-bad-steps must be at least 1, got {self.max_bad_steps}")
        if self.gan_weight and not self.gan_images and not is_embedded(self.teacher):
            raise ValueError("the GAN term needs real images for this teacher: pass --gan-images FOLDER (PNG/JPEG, "
                             "captions in same-named .txt files), or --gan-weight 0")
        if not 0 <= self.generator_t_min <= self.generator_t_max:
            raise ValueError(f"--generator-t-min / --generator-t-max must satisfy 0 <= min <= max, got "
                             f"{self.generator_t_min} and {self.generator_t_max}")
        if not 0 <= self.late_fraction < 1:
            raise ValueError(f"--late-fraction must be 0 (off) or more and less than 1, got {self.late_fraction}")
        if self.late_fraction:
            if self.late_t_max is None:
                raise ValueError("--late-fraction needs --late-t-max T, the top timestep of the late phase")
            if not self.generator_t_min <= self.late_t_max <= self.generator_t_max:
                raise ValueError(f"--late-t-max must lie between --generator-t-min ({self.generator_t_min}) and "
                                 f"--generator-t-max ({self.generator_t_max}), got {self.late_t_max}")
        if self.guidance < 1 or (self.fake_guidance is not None and self.fake_guidance < 1):
            raise ValueError("--guidance and --fake-guidance must be 1 (no guidance) or more")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema must be 0 (off) or a decay in (0, 1), got {self.ema}")
        students.AdapterSpec(self.student, self.student_rank, self.student_preset)
        students.AdapterSpec(self.fake, self.fake_rank, self.fake_preset)

    def student_spec(self) -> students.AdapterSpec:
        return students.AdapterSpec(self.student, self.student_rank, self.student_preset)

    def fake_spec(self) -> students.AdapterSpec:
        return students.AdapterSpec(self.fake, self.fake_rank, self.fake_preset)


class Diverged(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive non-finite losses; the last good checkpoint stays."""


class ResumeMismatch(ValueError):
    pass


def every(step: int, interval: int) -> bool:
    """True on each interval-th step; an interval of 0 switches the periodic action off."""
    return interval > 0 and step % interval == 0


def is_embedded(teacher: str) -> bool:
    return Path(teacher).expanduser().resolve() == MODEL_DIR.resolve()


def check_teacher(teacher: str) -> None:
    """The teacher path is named before anything that depends on it (its prompts, its recipe) is asked for."""
    path = Path(teacher).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"the teacher {teacher} does not exist; give a diffusers SD folder, a single-file "
                                "SD checkpoint or a PixArt-style DiT folder (or leave out --teacher for the embedded "
                                "model)")


def load_prompt_list(config: DistillConfig) -> list[str]:
    if config.prompts:
        return read_prompts(config.prompts)
    if not is_embedded(config.teacher):
        raise ValueError("a prompt file is needed for this teacher: pass --prompts FILE (one prompt per line, "
                         "or JSONL with a 'caption' field)")
    return [p.caption() for kind in ("single", "relation") for p in prompts_of("train", kind)]


def _reset_single_process_state() -> None:
    """accelerate keeps one global state per process; a process that runs several distillations one
    after another (tests, the web UI) must be able to change e.g. the mixed precision between them.
    Only done outside distributed launches, where the state belongs to the launcher."""
    import os

    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()
        GradientState._reset_state()


class Distiller:
    """One distillation run: setup, ``step()``, checkpoints, samples and the final files."""

    def __init__(self, config: DistillConfig, progress: bool = True, log: Callable[[str], None] = print):
        from accelerate import Accelerator

        check_teacher(config.teacher)
        self.config = config = config.resolved(is_embedded(config.teacher))
        config.check()
        self.out = Path(config.out).expanduser()
        self.log = log
        self.progress = progress
        self.prompts = load_prompt_list(config)
        fileio.check_output(self.out, overwrite=True)  # its folder exists and can be written
        fileio.refuse_same_path(self.out, [("--teacher", config.teacher), ("--prompts", config.prompts),
                                           ("--gan-images", config.gan_images)], inputs_may_be_inside=True)
        if config.export_merged:  # checked now, not after the whole run
            fileio.refuse_same_path(config.export_merged, [("--teacher", config.teacher), ("--out", self.out)])
            fileio.check_output(config.export_merged, config.overwrite)

        trackers = self._trackers()
        _reset_single_process_state()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.grad_accum,
                                       log_with=trackers or None, project_dir=str(self.out))
        self._claim = contextlib.ExitStack()  # the run folder's lock, held until the run ends
        try:
            self._setup(trackers)
        except BaseException:
            self.close()
            raise

    def _setup(self, trackers: list[str]) -> None:
        config = self.config
        if self.accelerator.is_main_process:
            self._claim.enter_context(fileio.output_lock(self.out))
            self._prepare_output()
        self.accelerator.wait_for_everyone()
        device = self.accelerator.device
        self.teacher = load_components(config.teacher)
        check_eps_prediction(self.teacher.scheduler.config)
        self.family = family_of_model(self.teacher.unet)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        for module in (self.teacher.unet, self.teacher.text_encoder, self.teacher.vae):
            module.to(device)
        if weight_dtype != torch.float32:
            self.teacher.unet.to(weight_dtype)

        # Student and fake start as copies of the teacher; their base weights stay frozen (except "full").
        torch.manual_seed(config.seed)  # adapter initialisation
        self.student = self._trainable_copy(config.student_spec(), weight_dtype)
        self.fake = self._trainable_copy(config.fake_spec(), weight_dtype)
        self.student_params = [p for p in self.student.parameters() if p.requires_grad]
        self.fake_params = [p for p in self.fake.parameters() if p.requires_grad]
        # fused: one kernel for all of a model's parameters (CPU and CUDA), fewer small ops a step
        fused = device.type in ("cpu", "cuda")
        self.opt_student = torch.optim.AdamW(self.student_params, lr=config.lr_student, weight_decay=0.0, fused=fused)
        head = self._gan_head(device) if config.gan_weight else None
        head_params = list(head.parameters()) if head is not None else []
        groups = [{"params": self.fake_params}] + ([{"params": head_params, "lr": config.gan_head_lr}] if head_params
                                                   else [])
        self.opt_fake = torch.optim.AdamW(groups, lr=config.lr_fake, weight_decay=0.0, fused=fused)
        self.student, self.fake, self.opt_student, self.opt_fake = self.accelerator.prepare(
            self.student, self.fake, self.opt_student, self.opt_fake)
        # wrapped like the fake model, so that its gradients are averaged across processes too
        self.gan_head = self.accelerator.prepare(head) if head is not None else None
        self.fake_params += head_params  # clipped, checkpointed and updated with the fake model
        self.ema = EMA(self.student_params, config.ema) if config.ema else None
        self.base_lrs = [[group["lr"] for group in opt.param_groups] for opt in (self.opt_student, self.opt_fake)]

        self.abar = self.teacher.scheduler.alphas_cumprod.to(device)
        self.final_t = self.teacher.scheduler.config.num_train_timesteps - 1
        if config.generator_t_max > self.final_t:
            raise ValueError(f"--generator-t-max {config.generator_t_max} is beyond this teacher's last timestep "
                             f"{self.final_t}; give at most {self.final_t}")
        self.shape = latent_shape(self.teacher)
        self.real = self._real_images() if self.gan_head is not None else None
        self._embeddings = self._precompute_embeddings()
        started = time.perf_counter()
        self.pairs = self._regression_pairs() if config.regression_pairs else None
        self.step = 0
        self.history: list[dict] = []
        self.bad_steps = 0
        self.last_step_finite = True
        self.checkpoint_step: int | None = None  # the step of the last good checkpoint in the run folder
        self.seconds = time.perf_counter() - started  # making the pairs is part of the training time
        self._teacher_samples = None
        if config.resume:
            self._load_checkpoint()
        if self.accelerator.is_main_process:  # only now, so that a refused run leaves nothing behind
            self.out.mkdir(exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
        if trackers and self.accelerator.is_main_process:
            self.accelerator.init_trackers("wadi-distill", config={k: v for k, v in asdict(config).items()
                                                                   if isinstance(v, (int, float, str, bool))})

    # ----- setup helpers

    def _prepare_output(self) -> None:
        """Under the run folder's lock: finish what a killed run left (a checkpoint swap cut in half, temporary
        files), then check the folder for --resume, or clear the old run for --overwrite."""
        c = self.config
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"--out {self.out} is a file; give a folder for the run")
        for name in (CHECKPOINT, "student.safetensors"):
            fileio.clean_leftovers(self.out / name)
        if c.resume:
            if not (self.out / CHECKPOINT / STATE_FILE).is_file():
                raise FileNotFoundError(f"nothing to resume: {self.out / CHECKPOINT / STATE_FILE} does not exist; "
                                        "start the run again with --overwrite instead of --resume")
        elif self.out.exists() and any(self.out.iterdir()):
            if not c.overwrite:
                raise FileExistsError(f"{self.out} is not empty; pass --resume to continue the run in it, "
                                      "--overwrite to start again there, or choose another --out")
            fileio.remove_paths([self.out / name for name in RUN_FILES])  # the old run must not be resumed later

    def close(self) -> None:
        """Release the run folder (done by :meth:`run` and :meth:`finish`; call it when driving steps by hand)."""
        self._claim.close()

    def _trackers(self) -> list[str]:
        if self.config.report_to == "none":
            return []
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            self.log("tensorboard is not installed; losses go to history.json only (pip install tensorboard)")
            return []
        return ["tensorboard"]

    def _trainable_copy(self, spec: students.AdapterSpec, weight_dtype) -> torch.nn.Module:
        model = copy.deepcopy(self.teacher.unet)
        if spec.kind != "full" and weight_dtype != torch.float32:
            model.to(weight_dtype)  # frozen base weights in half precision; adapters stay float32
        students.add_adapter(model, spec)
        if self.config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model.train()

    def _gan_head(self, device) -> torch.nn.Module:
        torch.manual_seed(self.config.seed + 1)
        self.tap = gan.FeatureTap(self.fake, self.config.gan_features)
        channels = gan.feature_channels(self.fake, self.config.gan_features)
        return gan.DiscriminatorHead(channels).to(device).train()

    def _real_images(self) -> dict | None:
        """--gan-images as uint8 images and captions; None for the embedded world, whose real images are
        renders of each batch's own prompts."""
        c = self.config
        if not c.gan_images:
            for prompt in self.prompts:
                try:
                    parse_prompt(prompt)
                except NotJudgeable:
                    raise ValueError(f"the GAN term renders real images of the prompts, but '{prompt}' is not a prompt "
                                     "of the shapes world; use its training prompts, pass --gan-images, or "
                                     "--gan-weight 0") from None
            return None
        names, images = read_image_folder(c.gan_images, image_size(self.teacher))
        folder = Path(c.gan_images)
        sidecars = [(folder / name).with_suffix(".txt") for name in names]
        captions = [path.read_text().strip() if path.is_file() else "" for path in sidecars]
        self.log(f"GAN term: {len(names)} real images from {folder}, {sum(map(bool, captions))} with captions")
        return {"images": images, "captions": captions}

    @torch.no_grad()
    def _precompute_embeddings(self) -> dict[str, torch.Tensor] | None:
        """Text embeddings of every prompt, computed once (the text encoder is frozen)."""
        self.null = self.teacher.encode_prompts([""]).to(self.accelerator.device)
        if len(self.prompts) > 20000:
            return None  # too many to keep: encode per batch instead
        out = {}
        texts = list(dict.fromkeys(self.prompts + (self.real["captions"] if self.real else [])))
        for start in range(0, len(texts), 256):
            chunk = texts[start:start + 256]
            for prompt, emb in zip(chunk, self.teacher.encode_prompts(chunk)):
                out[prompt] = emb
        return out

    @torch.no_grad()
    def _regression_pairs(self) -> dict:
        """(noise, prompt, teacher latent) triples for the regression loss, deterministic from the seed
        (a resumed run makes the same ones again)."""
        c = self.config
        rng = np.random.default_rng([c.seed, 7])
        prompts = [self.prompts[i] for i in rng.integers(len(self.prompts), size=c.regression_pairs)]
        seeds = [PAIR_SEED_OFFSET + c.seed * c.regression_pairs + i for i in range(c.regression_pairs)]
        self.log(f"making {len(prompts)} teacher samples for the regression loss")
        latents = sample_latents(self.teacher, prompts, seeds, steps=25, guidance=c.guidance, progress=self.progress)
        return {"prompts": prompts, "noise": initial_latents(seeds, self.shape), "latents": latents.float().cpu()}

    def embed(self, prompts: list[str]) -> torch.Tensor:
        if self._embeddings is not None:
            return torch.stack([self._embeddings[p] for p in prompts])
        with torch.no_grad():
            return self.teacher.encode_prompts(prompts).to(self.accelerator.device)

    # ----- training

    def _batch(self, micro: int):
        """Prompts and a generator for one micro-batch, fixed by (seed, step, micro-batch, process)."""
        c = self.config
        key = [c.seed, self.step, micro, self.accelerator.process_index]
        rng = np.random.default_rng(key)
        prompts = [self.prompts[i] for i in rng.integers(len(self.prompts), size=c.batch_size)]
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        pick = rng.integers(c.regression_pairs, size=max(1, c.batch_size // 4)) if self.pairs else None
        return prompts, gen, pick

    def _eps(self, model, x_t, t, cond_pos, scale):
        """Guided eps of ``model`` (CFG ``scale``): one batched call for both halves; at scale 1 the
        conditional half alone."""
        guided = scale != 1
        n = x_t.shape[0]
        x = torch.cat([x_t, x_t]) if guided else x_t
        cond = torch.cat([self.null.expand(n, -1, -1), cond_pos]) if guided else cond_pos
        with self.accelerator.autocast():
            eps = model(x.to(next(model.parameters()).dtype), torch.cat([t, t]) if guided else t,
                        cond.to(x.dtype)).sample.float()
        if not guided:
            return eps
        uncond, pos = eps.chunk(2)
        return vsd.guided(uncond, pos, scale)

    def _micro_step(self, micro: int) -> dict[str, float]:
        c, acc, device = self.config, self.accelerator, self.accelerator.device
        prompts, gen, pick = self._batch(micro)
        n = len(prompts)
        z = torch.randn((n, *self.shape), generator=gen)
        if pick is not None:  # the first len(pick) samples are regression pairs
            prompts[:len(pick)] = [self.pairs["prompts"][i] for i in pick]
            z[:len(pick)] = self.pairs["noise"][pick]
        cond = self.embed(prompts)
        z = z.to(device)

        # 1-4: the student's one-step x0 and its VSD gradient
        with acc.accumulate(self.student):
            with acc.autocast():
                x0 = predict_x0(self.student, self.teacher.scheduler, z, cond).float()
            t = vsd.sample_generator_timesteps(n, gen, device, self.generator_t_range())
            noise = torch.randn(x0.shape, generator=gen).to(device)
            x_t = self.teacher.scheduler.add_noise(x0.detach(), noise, t.cpu()).to(device)
            fake_scale = c.guidance if c.fake_guidance is None else c.fake_guidance
            eps_fake = loss_gan = None
            if self.gan_head is not None:  # the same noised x0, with its graph, through the frozen fake and head
                eps_fake, loss_gan = self._gan_generator_pass(x0, noise, t, cond)
                if fake_scale != 1:
                    eps_fake = None
            with torch.no_grad():
                eps_real = self._eps(self.teacher.unet, x_t, t, cond, c.guidance)
                if eps_fake is None:
                    eps_fake = self._eps(self.fake, x_t, t, cond, fake_scale)
            grad = vsd.score_gradient(x0.detach(), x_t, eps_real, eps_fake, self.abar[t], c.gradient_mode)
            loss_g = vsd.generator_loss(x0, grad)
            loss = loss_g
            if loss_gan is not None:
                loss = loss + c.gan_weight * loss_gan
            if pick is not None:
                target = self.pairs["latents"][pick].to(device)
                loss_r = vsd.regression_loss(x0[:len(pick)], target)
                loss = loss_g + c.regression_weight * loss_r
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(x0).all())
            if finite:
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.student_params, 1.0)
                self.opt_student.step()
            self.opt_student.zero_grad(set_to_none=True)

        # 5: the fake model learns the student's current distribution (--fake-updates times); with the GAN
        # term its head learns real from student latents in the first of them
        real = self._real_latents(prompts, gen) if self.gan_head is not None else None
        for update in range(c.fake_updates):
            loss_f, loss_d = self._fake_update(x0.detach(), cond, gen, real if update == 0 else None)
            if update == 0:
                first_loss_d = loss_d
        finite_f = bool(torch.isfinite(loss_f))
        record = {"loss_student": loss_g.item(), "loss_fake": loss_f.item(), "finite": finite and finite_f,
                  "grad_norm": grad.norm().item() / math.sqrt(n)}
        if pick is not None:
            record["loss_regression"] = loss_r.item()
        if loss_gan is not None:
            record["loss_gan"], record["loss_discriminator"] = loss_gan.item(), first_loss_d.item()
        return record

    def _gan_generator_pass(self, x0, noise, t, cond):
        """The student's GAN loss on its noised x0, and the fake model's conditional eps there (the VSD
        gradient's fake term at CFG 1, so the pass adds only a backward: with ``mid`` features, through the
        fake's first half)."""
        fake = self.accelerator.unwrap_model(self.fake)  # no DDP: no fake weight takes a gradient here
        x_t = self.teacher.scheduler.add_noise(x0, noise, t.cpu())
        with gan.frozen(self.fake_params), self.tap.capture(), self.accelerator.autocast():
            dtype = next(fake.parameters()).dtype
            eps = fake(x_t.to(dtype), t, cond.to(dtype)).sample.float()
            loss = gan.generator_loss(self._unwrapped_head()(self.tap.features))
        return eps.detach(), loss

    def _unwrapped_head(self):
        return self.accelerator.unwrap_model(self.gan_head)

    @torch.no_grad()
    def _real_latents(self, prompts: list[str], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of real latents and their text embeddings for the discriminator."""
        n = len(prompts)
        if self.real is None:  # the embedded world: renders of this batch's own prompts
            rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=gen)))
            images = render_batch([scene_for_prompt(parse_prompt(p), rng) for p in prompts])
            captions = prompts
        else:
            pick = torch.randint(len(self.real["captions"]), (n,), generator=gen).tolist()
            images = self.real["images"][pick]
            captions = [self.real["captions"][i] for i in pick]
        return encode(self.teacher, images).float(), self.embed(captions)

    def _fake_update(self, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator,
                     real: tuple[torch.Tensor, torch.Tensor] | None = None):
        """One step of the fake model's eps loss on the student's x0; with ``real`` (latents, embeddings) also
        of the discriminator loss, real and student latents noised alike in one batch. Returns both losses."""
        c, acc, device = self.config, self.accelerator, self.accelerator.device
        n = x0.shape[0]
        with acc.accumulate(self.fake):
            t = vsd.sample_fake_timesteps(n, len(self.abar), gen, device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            x_t = self.teacher.scheduler.add_noise(x0, noise, t.cpu()).to(device)
            drop = (torch.rand(n, generator=gen) < c.null_prompt_share).to(device)
            cond_f = torch.where(drop[:, None, None], self.null.expand(n, -1, -1), cond)
            if real is not None:
                real_noisy = self.teacher.scheduler.add_noise(real[0].to(device), noise, t.cpu()).to(device)
                real_cond = torch.where(drop[:, None, None], self.null.expand(n, -1, -1), real[1])
                x_t, t, cond_f = torch.cat([x_t, real_noisy]), torch.cat([t, t]), torch.cat([cond_f, real_cond])
            with acc.autocast(), (self.tap.capture() if real is not None else contextlib.nullcontext()):
                dtype = next(self.fake.parameters()).dtype
                pred = self.fake(x_t.to(dtype), t, cond_f.to(dtype)).sample
            loss = vsd.fake_model_loss(pred[:n], noise, self.abar[t[:n]])
            loss_d = torch.zeros(())
            if real is not None:
                student_logits, real_logits = self.gan_head(self.tap.features).chunk(2)
                loss_d = gan.discriminator_loss(real_logits, student_logits)
                loss = loss + c.gan_disc_weight * loss_d
            if torch.isfinite(loss):
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.fake_params, 1.0)
                self.opt_fake.step()
            self.opt_fake.zero_grad(set_to_none=True)
        return loss.detach(), loss_d.detach()

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches) on both networks; returns its losses."""
        started = time.perf_counter()
        self._set_learning_rates()
        results = [self._micro_step(m) for m in range(self.config.grad_accum)]
        finite = all(r["finite"] for r in results)
        self.last_step_finite = finite
        if finite:
            self.bad_steps = 0
            if self.ema:
                self.ema.update()
        else:
            self.bad_steps += 1
            if self.bad_steps >= self.config.max_bad_steps:
                raise Diverged(f"the losses were NaN/Inf for {self.bad_steps} steps in a row (up to step "
                               f"{self.step + 1}); stopped. {self.divergence_advice()}")
        logged = ("loss_student", "loss_fake", "grad_norm") + (("loss_regression",) if self.pairs else ()) + \
            (("loss_gan", "loss_discriminator") if self.gan_head is not None else ())
        record = {"step": self.step + 1, **{k: float(np.mean([r[k] for r in results])) for k in logged},
                  "skipped": not finite, "seconds": time.perf_counter() - started}
        self.history.append(record)
        self.seconds += record["seconds"]
        self.step += 1
        self.accelerator.log({k: v for k, v in record.items() if k not in ("step", "skipped")}, step=self.step)
        return record

    def generator_t_range(self) -> tuple[int, int]:
        """The VSD gradient's timestep range at this step (a pure function of the step, so resuming is exact)."""
        c = self.config
        late = c.late_fraction and self.step >= c.steps - round(c.late_fraction * c.steps)
        return c.generator_t_min, c.late_t_max if late else c.generator_t_max

    def _set_learning_rates(self) -> None:
        c = self.config
        factor = lr_factor(c.lr_schedule, self.step, c.steps, c.lr_warmup)
        for opt, base in zip((self.opt_student, self.opt_fake), self.base_lrs):
            for group, lr in zip(opt.param_groups, base):
                group["lr"] = lr * factor

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            on_step: Callable[[dict], None] | None = None) -> Path | None:
        """Train to ``config.steps`` with checkpoints and sample grids; returns the final adapter
        (None if ``should_stop`` ended the run early, after writing a checkpoint)."""
        c = self.config
        bar = tqdm(total=c.steps, initial=self.step, desc="distilling", disable=not self.progress)
        if self.step == 0:
            self.write_samples()
        try:
            while self.step < c.steps:
                record = self.train_step()
                bar.update(1)
                bar.set_postfix(student=f"{record['loss_student']:.3g}", fake=f"{record['loss_fake']:.3g}")
                if on_step:
                    on_step(record)
                if every(self.step, c.checkpoint_every) and self.step < c.steps and not record["skipped"]:
                    self.save_checkpoint()
                if every(self.step, c.sample_every) or self.step == c.steps:
                    self.write_samples()
                if should_stop() and self.step < c.steps:
                    if self.save_checkpoint() is not None:
                        self.log(f"stopped at step {self.step}; continue with --resume")
                    else:
                        self.log(f"stopped at step {self.step}; {self.divergence_advice()}")
                    return None
            return self.finish()
        finally:
            bar.close()
            self.close()

    def divergence_advice(self) -> str:
        """Where the last good checkpoint is and the command that continues from it at lower rates (the rates
        and the mixed precision may change on resume; the other settings must not)."""
        c = self.config
        lower = f"--lr-student {c.lr_student / 4:.3g} --lr-fake {c.lr_fake / 4:.3g}" + \
            (" --mixed-precision no" if c.mixed_precision != "no" else "")
        if self.checkpoint_step is not None:
            return (f"The last good checkpoint (step {self.checkpoint_step}) is in {self.out / CHECKPOINT}; continue "
                    f"from it at lower rates: wadi distill --out {self.out} --resume {lower} (and the run's other "
                    "options as before)")
        return (f"No good checkpoint was written before it; start again at lower rates: wadi distill --out "
                f"{self.out} --overwrite {lower} (and the run's other options as before)")

    def weights_are_finite(self) -> bool:
        tensors = self.student_params + self.fake_params + (list(self.ema.shadow) if self.ema else [])
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    # ----- outputs

    def unwrapped_student(self):
        return self.accelerator.unwrap_model(self.student)

    @torch.no_grad()
    def student_images(self, prompts, seeds) -> np.ndarray:
        student = self.unwrapped_student()
        student.eval()
        if self.ema:
            self.ema.swap()
        try:
            z = initial_latents(seeds, self.shape).to(self.accelerator.device)
            cond = self.embed(list(prompts)) if all(p in (self._embeddings or {}) for p in prompts) else \
                self.teacher.encode_prompts(list(prompts)).to(self.accelerator.device)
            dtype = next(student.parameters()).dtype
            with self.accelerator.autocast():
                x0 = predict_x0(student, self.teacher.scheduler, z.to(dtype), cond.to(dtype))
            return decode(self.teacher, x0.float())
        finally:
            if self.ema:
                self.ema.swap()
            student.train()

    def write_samples(self) -> Path | None:
        """Teacher (multi-step CFG) vs student (one step) on fixed prompts and seeds."""
        if not self.accelerator.is_main_process:
            return None
        prompts = list(SAMPLE_PROMPTS) if is_embedded(self.config.teacher) else self.prompts[:8]
        seeds = list(range(len(prompts)))
        if self._teacher_samples is None:
            self._teacher_samples = sample(self.teacher, prompts, seeds, steps=25, guidance=self.config.sample_guidance,
                                           progress=False)
        try:
            student = self.student_images(prompts, seeds)
        except NonFiniteError:  # a diverging step: the losses say so, and the checkpoint is not replaced
            self.log(f"no sample grid at step {self.step}: the student's images are not finite")
            return None
        grid = side_by_side({"teacher 25 steps": self._teacher_samples, f"student, step {self.step}": student},
                            prompts)
        path = fileio.save_png(grid, self.out / "samples" / f"step_{self.step:06d}.png", overwrite=True)
        fileio.save_png(grid, self.out / "samples" / "latest.png", overwrite=True)
        return path

    def write_loss_plot(self) -> Path:
        path = self.out / "loss.png"
        curves = {"student (generator) loss": [r["loss_student"] for r in self.history],
                  "fake score model loss": [r["loss_fake"] for r in self.history]}
        if self.pairs:
            curves["regression loss"] = [r["loss_regression"] for r in self.history]
        if self.gan_head is not None:
            curves["GAN loss (student)"] = [r["loss_gan"] for r in self.history]
            curves["discriminator loss"] = [r["loss_discriminator"] for r in self.history]
        loss_curves(curves, path,
                    title=f"WaDi distillation ({self.config.student} student, {self.config.fake} fake)")
        fileio.write_text(self.out / "history.json", json.dumps(self.history), overwrite=True)
        return path

    def save_checkpoint(self) -> Path | None:
        """Adapter weights, optimiser and EMA states, step and history, written atomically; only a good state
        (its last step's losses and all its weights finite), so that the checkpoint is always one to resume."""
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        if not (self.last_step_finite and self.weights_are_finite()):
            self.log(f"no checkpoint at step {self.step}: its losses or weights are not finite; the last good one "
                     f"(step {self.checkpoint_step}) stays" if self.checkpoint_step is not None else
                     f"no checkpoint at step {self.step}: its losses or weights are not finite")
            return None
        state = {
            "config": {k: getattr(self.config, k) for k in RESUME_KEYS + RESUME_MAY_CHANGE},
            "step": self.step, "history": self.history, "seconds": self.seconds,
            "student": students.trainable_state(self.unwrapped_student(), self.config.student_spec()),
            "fake": students.trainable_state(self.accelerator.unwrap_model(self.fake), self.config.fake_spec()),
            "opt_student": self.opt_student.state_dict(), "opt_fake": self.opt_fake.state_dict(),
            "ema": self.ema.shadow if self.ema else None,
            "gan_head": self._unwrapped_head().state_dict() if self.gan_head is not None else None,
            "torch_rng": torch.get_rng_state(),
        }
        with fileio.atomic_dir(self.out / CHECKPOINT, overwrite=True) as tmp:
            torch.save(state, tmp / STATE_FILE)
        self.checkpoint_step = self.step
        self.write_loss_plot()
        return self.out / CHECKPOINT

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read the checkpoint {path} ({err}); it is damaged — start again with "
                             "--overwrite") from None
        needed = ("config", "step", "history", "seconds", "student", "fake", "opt_student", "opt_fake", "torch_rng")
        missing = [key for key in needed if not isinstance(state, dict) or key not in state]
        if missing or not isinstance(state["config"], dict):
            raise ValueError(f"the checkpoint {path} has no '{(missing or ['config'])[0]}'; it was not written by "
                             "wadi distill or is damaged — start again with --overwrite")
        # late_fraction's field default is None ("per teacher"); checkpoints from before it had no late phase
        defaults = {f.name: f.default for f in fields(DistillConfig)} | {"late_fraction": 0.0}
        for key in RESUME_KEYS:  # a key missing from an older checkpoint had its default then
            saved, now = state["config"].get(key, defaults[key]), getattr(self.config, key)
            if saved != now:
                raise ResumeMismatch(f"cannot resume {self.out}: its checkpoint was made with {key}={saved!r} but "
                                     f"this run asks for {key}={now!r}; use the same settings or another --out")
        for key in RESUME_MAY_CHANGE:
            saved, now = state["config"].get(key), getattr(self.config, key)
            if saved is not None and saved != now:
                self.log(f"resuming with {key}={now!r} (the checkpoint's run used {saved!r})")
        students.load_trainable_state(self.unwrapped_student(), self.config.student_spec(), state["student"])
        students.load_trainable_state(self.accelerator.unwrap_model(self.fake), self.config.fake_spec(), state["fake"])
        self.opt_student.load_state_dict(state["opt_student"])
        self.opt_fake.load_state_dict(state["opt_fake"])
        if self.gan_head is not None:
            self._unwrapped_head().load_state_dict(state["gan_head"])
        if self.ema and state["ema"] is not None:
            for s, saved in zip(self.ema.shadow, state["ema"]):
                s.copy_(saved)
        torch.set_rng_state(state["torch_rng"])
        self.step, self.history, self.seconds = state["step"], state["history"], state["seconds"]
        self.checkpoint_step = self.step
        self.log(f"resumed {self.out} at step {self.step}")

    def finish(self) -> Path:
        """The final ``student.safetensors`` (EMA weights if EMA is on), loss plot, optional merged model."""
        self.accelerator.wait_for_everyone()
        path = self.out / "student.safetensors"
        if not (self.last_step_finite and self.weights_are_finite()):
            self.close()
            raise Diverged(f"the weights are not finite after step {self.step}, so no student was written. "
                           f"{self.divergence_advice()}")
        if self.accelerator.is_main_process:
            self.save_checkpoint()
            if self.ema:
                self.ema.swap()
            extra = {"wadi.teacher": self.config.teacher, "wadi.steps": str(self.step),
                     "wadi.one_step_t": str(self.final_t)}
            students.save_adapter_file(self.unwrapped_student(), self.config.student_spec(), path, extra=extra,
                                       overwrite=True)
            if self.config.export_merged:
                export_merged(self.config.teacher, path, self.config.export_merged, overwrite=self.config.overwrite)
            if self.ema:
                self.ema.swap()
        self.accelerator.end_training()
        self.close()
        return path


def export_merged(teacher: str, adapter: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """A copy of the teacher's diffusers folder whose UNet (or DiT) has the student baked in."""
    import shutil

    fileio.refuse_same_path(out, [("--teacher", teacher), ("--student", adapter)])
    if Path(teacher).is_file():  # a single-file teacher: a single file with the student's rotations baked in
        from wadi_core.merge import merge_checkpoint
        if students.read_spec(adapter).kind != "lorad":
            raise ValueError("--export-merged of a single-file teacher needs a LoRaD student; merge others into a "
                             "diffusers folder of the teacher")
        out = Path(out)
        return merge_checkpoint(teacher, [(adapter, 1.0)], out if out.suffix == ".safetensors" else
                                out.with_suffix(".safetensors"), "single-file", overwrite, progress=False)
    components = load_components(teacher)
    students.apply_adapter_file(components.unet, adapter)
    network = students.plain_model(components.unet)
    part = "transformer" if is_dit_folder(teacher) else "unet"
    with fileio.atomic_dir(out, overwrite) as tmp:
        shutil.copytree(teacher, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(part))
        network.save_pretrained(tmp / part)
        if part == "transformer":  # diffusers' own class name, so PixArt pipelines load the folder
            config = json.loads((tmp / part / "config.json").read_text())
            config["_class_name"] = "PixArtTransformer2DModel"
            (tmp / part / "config.json").write_text(json.dumps(config, indent=1))
    return Path(out)


def trainable_share(config: DistillConfig) -> dict[str, float]:
    """Trainable parameters of student and fake, and their share of the teacher's UNet."""
    config = config.resolved(is_embedded(config.teacher))
    unet = load_components(config.teacher).unet
    total = sum(p.numel() for p in unet.parameters())
    out = {"unet_parameters": total}
    for role, spec in (("student", config.student_spec()), ("fake", config.fake_spec())):
        model = copy.deepcopy(unet)
        params = students.add_adapter(model, spec)
        out[f"{role}_trainable"] = sum(p.numel() for p in params)
        out[f"{role}_share"] = out[f"{role}_trainable"] / total
    return out


# ----- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DistillConfig(out="")
    p.add_argument("--out", required=True, help="output folder (checkpoint, samples, student.safetensors)")
    p.add_argument("--teacher", default=d.teacher,
                   help="a diffusers SD folder, a single-file SD1.x checkpoint (tokenizer/ beside it) or a "
                        "PixArt-style DiT folder (default: the embedded shapes model)")
    p.add_argument("--prompts", help="prompt file: one per line, or JSONL with a 'caption' field "
                                     "(default for the embedded model: its training prompts)")
    p.add_argument("--student", default=d.student, choices=students.KINDS, help="student adapter type")
    p.add_argument("--student-rank", type=A.positive_int, help="student rank (paper 256; embedded default 24)")
    p.add_argument("--student-preset", default=d.student_preset)
    p.add_argument("--fake", default=d.fake, choices=students.KINDS, help="fake score model adapter type")
    p.add_argument("--fake-rank", type=A.positive_int, help="fake rank (paper 32; embedded default 8)")
    p.add_argument("--fake-preset", default=d.fake_preset)
    p.add_argument("--steps", type=A.positive_int, help="optimiser steps (embedded default 800)")
    p.add_argument("--batch-size", type=A.positive_int,
                   help="prompts per micro-batch and process (paper 128; embedded 16)")
    p.add_argument("--grad-accum", type=A.positive_int, default=d.grad_accum)
    p.add_argument("--lr-student", type=A.learning_rate,
                   help="student learning rate (LoRaD: paper 1e-4, embedded 5e-3; embedded LoRA/DoRA 1e-3, full 1e-4; "
                        "full, real teacher 1e-5)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="learning-rate schedule of both networks over --steps (cosine and linear end at 0)")
    p.add_argument("--lr-warmup-steps", dest="lr_warmup", type=A.count, default=d.lr_warmup,
                   help="steps of linear warmup before the schedule")
    p.add_argument("--lr-fake", type=A.learning_rate,
                   help="fake model learning rate (LoRaD: 1e-2; embedded LoRA/DoRA 3e-3, full 5e-4; full, real teacher "
                        "1e-5)")
    p.add_argument("--guidance", type=A.vsd_guidance,
                   help="CFG of teacher and fake in the VSD gradient (paper 1.5; embedded 2)")
    p.add_argument("--fake-guidance", type=A.vsd_guidance,
                   help="CFG of the fake model alone (paper: the same as --guidance, as in the paper's script; "
                        "embedded 1, which targets the teacher's guided distribution, as in DMD2)")
    p.add_argument("--gradient-mode", default=d.gradient_mode, choices=vsd.GRADIENT_MODES)
    p.add_argument("--generator-t-min", type=A.count, default=d.generator_t_min,
                   help="lowest timestep of the VSD gradient (spec: 20)")
    p.add_argument("--generator-t-max", type=A.count, default=d.generator_t_max,
                   help="highest timestep of the VSD gradient (spec: 980)")
    p.add_argument("--late-fraction", type=A.fraction, metavar="F",
                   help="for the last F of the steps, draw the VSD gradient's timesteps up to --late-t-max only, a "
                        "low-noise phase that refines colours (paper 0 = off; embedded 0.375)")
    p.add_argument("--late-t-max", type=A.count, metavar="T",
                   help="highest timestep of the VSD gradient in the late phase (embedded 400)")
    p.add_argument("--fake-updates", type=A.positive_int,
                   help="fake score model steps per student step (paper 1; embedded default 3; DMD2 uses 5)")
    p.add_argument("--regression-pairs", type=A.count, default=d.regression_pairs, metavar="N",
                   help="DMD's regression loss (not part of WaDi; off by default): make N teacher samples before "
                        "training and pull the student's one-step output for their noise toward them")
    p.add_argument("--regression-weight", type=A.non_negative, default=d.regression_weight)
    p.add_argument("--gan-weight", type=A.non_negative, default=d.gan_weight,
                   help="DMD2's GAN term (not part of WaDi; 0 = off): weight of the student's GAN loss against a "
                        "head on the fake model's middle features")
    p.add_argument("--gan-disc-weight", type=A.non_negative, default=d.gan_disc_weight,
                   help="weight of the discriminator loss in the fake model's update")
    p.add_argument("--gan-images", metavar="FOLDER",
                   help="real images for the GAN term (captions in same-named .txt files); the embedded world "
                        "renders its own")
    p.add_argument("--gan-head-lr", type=A.learning_rate, default=d.gan_head_lr)
    p.add_argument("--gan-features", default=d.gan_features, choices=gan.FEATURES,
                   help="where the discriminator head reads the fake model: mid (the UNet's mid block, as DMD2) or "
                        "last (its last up block, full latent resolution)")
    p.add_argument("--ema", type=A.fraction, help="EMA decay of the student adapter, 0 = off (paper's script: off, "
                                             "optionally 0.999; embedded default 0.99)")
    p.add_argument("--seed", type=A.seed, default=d.seed)
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=("no", "fp16", "bf16"))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--checkpoint-every", type=A.count, default=d.checkpoint_every,
                   help="steps between resumable checkpoints, 0 = none before the end")
    p.add_argument("--sample-every", type=A.count, default=d.sample_every,
                   help="steps between sample grids, 0 = only at the start and the end")
    p.add_argument("--max-bad-steps", type=A.positive_int, default=d.max_bad_steps,
                   help="stop after this many consecutive NaN/Inf steps")
    p.add_argument("--export-merged", help="also write the teacher folder with the student merged into its UNet")
    p.add_argument("--report-to", default=d.report_to, choices=("tensorboard", "none"))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a non-empty --out")
    p.add_argument("--quiet", action="store_true")


def config_from_args(args) -> DistillConfig:
    names = {f.name for f in fields(DistillConfig)}
    return DistillConfig(**{k: v for k, v in vars(args).items() if k in names})


def register(sub) -> None:
    p = sub.add_parser("distill", help="distil a multi-step teacher into a one-step student (WaDi)")
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    distiller = Distiller(config_from_args(args), progress=not args.quiet)
    path = distiller.run()
    if path is not None:
        distiller.log(f"wrote {path} ({distiller.step} steps, {distiller.seconds / 60:.1f} min of training); "
                      f"samples in {distiller.out / 'samples'}, losses in {distiller.out / 'loss.png'}")
    return 0


def main(argv=None) -> int:
    """``python -m wadi_cli.distill ...`` / ``accelerate launch -m wadi_cli.distill ...``."""
    import sys

    from .cli import main as cli_main
    return cli_main(["distill", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
