"""WaDi distillation of a multi-step teacher into a one-step student (the spec's section 4), on one CPU or under
``accelerate launch`` on many GPUs or CPU processes (DDP, or FSDP with ``--use_fsdp``: :mod:`.sharding`).

Three networks share the teacher's architecture: the frozen teacher, the student (teacher + a trainable
adapter, LoRaD by default) and the fake score model (teacher + its own adapter). A step reads in order:

1. the student draws x0 from noise in one step;
2. the VSD gradient: teacher and fake predict the noise of a re-noised x0, and the student is pushed toward the
   teacher along ``sigma_t^2 (eps_teacher - eps_fake)``;
3. the fake model learns the student's current distribution (``fake_updates`` times);
4. bookkeeping: the step's record, the EMA, and a stop after ``max_bad_steps`` non-finite steps in a row.

Every step's prompts and noise are drawn for its whole batch from (seed, step) and each micro-batch of each process
keeps its rows, so a run resumed from a checkpoint retraces the uninterrupted one exactly on CPU, and micro-batches
(``grad_accum``) and processes train the student of one batch as large as theirs together. Steps 1-2 run over all
micro-batches before step 3 does, each network stepping once after the last.

The CLI, ``wadi demo``, the web UI and the ComfyUI nodes all run this class; what the teacher's world supplies
comes through :mod:`wadi_core.distill.world`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import fileio, students
from ..ema import EMA
from ..images import side_by_side
from ..models import NonFiniteError, decode, family_of_model, family_of_path, load_components
from ..models.hub import local_path
from ..plots import loss_curves
from ..prompts import read_prompts
from ..sampling import MultiStep, initial_latents, latent_shape, prediction_type
from ..sampling.prediction import eps_from_output
from ..sampling.onestep import predict_x0
from ..schedules import lr_factor
from . import gan, losses, offload, shared, sharding
from .config import MAY_CHANGE, MATCH, OLD_OPTIONS, OPTIONS, DistillConfig
from .extras import Extras
from .world import world_for_family

CHECKPOINT = "checkpoint"
STATE_FILE = "state.pt"
STUDENTS = "students"  # the students of --student-every, one file per kept step
# What a run writes into its folder; --overwrite removes these (and only these) before starting again.
RUN_FILES = ("checkpoint", "samples", STUDENTS, "student.safetensors", "history.json", "loss.png", "wadi-distill")


class Diverged(RuntimeError):
    """Raised after ``max_bad_steps`` consecutive non-finite losses; the last good checkpoint stays."""


def _split(processes: int, batch_size: int, grad_accum: int) -> str:
    """How a step's whole batch is split, in words: "2 process(es) x batch 4" (x micro-batches if more than one)."""
    micro = f" x {grad_accum} micro-batches" if grad_accum > 1 else ""
    return f"{processes} process(es){micro} x batch {batch_size}"


class ResumeMismatch(ValueError):
    pass


@dataclasses.dataclass
class Micro:
    """One micro-batch of a step, from the student's pass to the fake model's updates: its place in the step, its
    prompts, the student's x0 (detached) and the prompts' embeddings, the generator of its further draws and that
    of the extras' draws, and its record (losses, whether all was finite)."""
    index: int
    prompts: list[str]
    x0: torch.Tensor
    cond: torch.Tensor
    gen: torch.Generator
    extras_gen: torch.Generator
    record: dict


# steps of a run measured before it says how long the rest will take; the first few are slower (the CPU's kernels
# and the allocator warm up: 1.4-1.7 s against 0.95 s later in a demo on a 2-core EPYC), so the estimate takes
# the median of the last half of them
ESTIMATE_AFTER = 10


def every(step: int, interval: int) -> bool:
    """True on each interval-th step; an interval of 0 switches the periodic action off."""
    return interval > 0 and step % interval == 0


def check_teacher(model: str | None) -> None:
    """The teacher path is named before anything that depends on it (its prompts, its recipe) is asked for."""
    if model and not Path(local_path(model)).expanduser().exists():
        raise FileNotFoundError(f"the teacher {model} does not exist; give a diffusers SD folder, a single-file "
                                "SD checkpoint, a PixArt-style DiT folder or a Hugging Face Hub id (or leave out "
                                "--model for the embedded model)")


def _world_size() -> int:
    """The number of processes of this run, as the launcher (accelerate, torchrun) set it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _reset_single_process_state() -> None:
    """accelerate keeps one global state per process; a process that runs several distillations one after another
    (tests, the web UI) must be able to change e.g. the mixed precision between them. Only done outside distributed
    launches, where the state belongs to the launcher."""
    from accelerate.state import AcceleratorState, GradientState

    if _world_size() == 1:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _processes_on_cpu() -> bool:
    """Several processes on a machine without an accelerator (``accelerate launch --multi_gpu`` or ``torchrun``):
    accelerate joins them into one gloo group only when told they are on the CPU; otherwise each would train
    alone. (``accelerate launch --cpu`` itself starts one process whatever --num_processes says; docs/multi_gpu.md.)"""
    return _world_size() > 1 and not torch.accelerator.is_available()


class Distiller:
    """One distillation run: setup, ``train_step()``, checkpoints, samples and the final files."""

    def __init__(self, config: DistillConfig, progress: bool = True, log: Callable[[str], None] = print):
        from accelerate import Accelerator

        check_teacher(config.model)
        self.config = config = config.resolved(processes=_world_size())
        config.check()
        self.out = Path(config.out).expanduser()
        self.log = log
        self.progress = progress
        # accelerate launch --use_fsdp: the distiller shards the networks itself (sharding.py), on CPUs too
        self.sharded = sharding.requested() and _world_size() > 1
        if self.sharded and config.offload_optimizer:
            raise ValueError("--offload-optimizer does not run under FSDP, which already divides the optimiser state "
                             "among the processes; launch with --multi_gpu (DDP) instead of --use_fsdp, or leave out "
                             "--offload-optimizer")
        self.world = world_for_family(family_of_path(config.model))
        self.prompts = self._prompt_list()
        self.extras = Extras(self)
        self.extras.check_prompts()
        trackers = self._trackers()
        _reset_single_process_state()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=_processes_on_cpu(),
                                       gradient_accumulation_steps=config.grad_accum,
                                       log_with=trackers or None, project_dir=str(self.out),
                                       **sharding.accelerate_plugin(self.sharded))
        if self.accelerator.is_main_process:  # the main process checks, writes and speaks for all
            self._check_outputs()
        else:
            self.log = lambda message: None
        self._claim = contextlib.ExitStack()  # the run folder's lock, held until the run ends
        try:
            self._setup(trackers)
        except BaseException:
            self.close()
            raise

    # ----- set-up

    def _check_outputs(self) -> None:
        c = self.config
        fileio.check_output(self.out, overwrite=True)  # its folder exists and can be written
        fileio.refuse_same_path(self.out, [("--model", c.model), ("--unet", c.backbone), ("--prompts", c.prompts),
                                           ("--gan-images", c.extras.gan.images)], inputs_may_be_inside=True)
        if c.export_merged:  # checked now, not after the whole run
            fileio.refuse_same_path(c.export_merged, [("--model", c.model), ("--out", self.out)])
            fileio.check_output(c.export_merged, c.overwrite)

    def _prompt_list(self) -> list[str]:
        if self.config.prompts:
            return read_prompts(self.config.prompts)
        prompts = self.world.training_prompts()
        if prompts is None:
            raise ValueError("a prompt file is needed for this teacher: pass --prompts FILE (one prompt per line, "
                             "or JSONL with a 'caption' field)")
        return prompts

    def _setup(self, trackers: list[str]) -> None:
        c = self.config
        if self.accelerator.is_main_process:
            self._claim.enter_context(fileio.output_lock(self.out))
            self._prepare_output()
        self.accelerator.wait_for_everyone()
        device = self.accelerator.device
        # the backbone is read in its training type, never held in float32 on the way (docs/benchmarks.md)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision, torch.float32)
        self.teacher = load_components(c.model, backbone=c.backbone, unet_dtype=weight_dtype)
        self.prediction = prediction_type(self.teacher.scheduler.config)  # eps or v; student and fake share it
        self.family = family_of_model(self.teacher.unet)
        for module in (self.teacher.unet, self.teacher.text_encoder, self.teacher.vae):
            module.to(device)
        # oneDNN's convolutions take channels-last kernels faster (docs/benchmarks.md); FSDP shards only
        # contiguous weights
        if device.type == "cpu" and not self.sharded:
            self.teacher.unet.to(memory_format=torch.channels_last)

        # Student and fake are adapters on the teacher's frozen backbone (shared.Role), or copies of it ("full", or
        # --separate-copies); their base weights stay frozen (except "full").
        torch.manual_seed(c.seed)  # adapter initialisation
        self.student = self._network("student", self.student_spec(), weight_dtype)
        self.fake = self._network("fake", self.fake_spec(), weight_dtype)
        self._share_backbone()
        if self.sharded:
            self._shard()
        self.student_params = students.trainable_parameters(*self._model_and_name("student"))
        self.fake_params = students.trainable_parameters(*self._model_and_name("fake"))
        self.log(self._trained_weights())
        # fused: one kernel for all of a model's parameters (CPU and CUDA), fewer small ops a step; HostAdamW steps
        # the same way in host memory (--offload-optimizer)
        fused = device.type in ("cpu", "cuda") or c.offload_optimizer
        adamw = offload.HostAdamW if c.offload_optimizer else torch.optim.AdamW
        self.opt_student = adamw(self.student_params, lr=c.student.lr, weight_decay=0.0, fused=fused)
        extra_groups = self.extras.fake_param_groups(device)
        self.opt_fake = adamw([{"params": self.fake_params}] + extra_groups, lr=c.fake.lr, weight_decay=0.0,
                              fused=fused)
        if self.sharded:  # FSDP averages the gradients itself; accelerate only wraps the optimisers
            self.opt_student, self.opt_fake = self.accelerator.prepare(self.opt_student, self.opt_fake)
        else:  # DDP takes the parameters that require a gradient when it wraps a network: each wrapper only its own
            with gan.frozen(self.fake_params):
                self.student, self.opt_student = self.accelerator.prepare(self.student, self.opt_student)
            with gan.frozen(self.student_params):
                self.fake, self.opt_fake = self.accelerator.prepare(self.fake, self.opt_fake)
        self.extras.prepare(self.accelerator)
        # what accelerate keeps from averaging gradients before a step's last micro-batch: the DDP wrappers, or
        # under FSDP the sharded backbones
        self._synced = self._sharded if self.sharded else [self.student, self.fake]
        self._micro = 0  # the micro-batch of the step being trained
        self._finite = {"student": True, "fake": True}  # each network's micro-batches of the step finite so far
        self.fake_params += [p for group in extra_groups for p in group["params"]]  # clipped with the fake model
        self.ema = EMA(self.student_params, c.ema) if c.ema else None
        self.base_lrs = [[group["lr"] for group in opt.param_groups] for opt in (self.opt_student, self.opt_fake)]

        self.abar = self.teacher.scheduler.alphas_cumprod.to(device)
        self.final_t = self.teacher.scheduler.config.num_train_timesteps - 1
        if c.timesteps.t_max > self.final_t:
            raise ValueError(f"--generator-t-max {c.timesteps.t_max} is beyond this teacher's last timestep "
                             f"{self.final_t}; give at most {self.final_t}")
        self.shape = latent_shape(self.teacher)
        self.extras.load_real_images()
        self._embeddings = self._precompute_embeddings()
        started = time.perf_counter()
        self.extras.make_pairs()
        self.step = 0
        self.history: list[dict] = []
        self.bad_steps = 0
        self.last_step_finite = True
        self.checkpoint_step: int | None = None  # the step of the last good checkpoint in the run folder
        self.seconds = time.perf_counter() - started  # making the pairs is part of the training time
        self._teacher_samples = None  # (the sample guidance, the teacher's uint8 images), kept in checkpoints
        if c.resume:
            self._load_checkpoint()
        if self.accelerator.is_main_process:  # only now, so that a refused run leaves nothing behind
            self.out.mkdir(exist_ok=True)
            (self.out / "samples").mkdir(exist_ok=True)
        if trackers and self.accelerator.is_main_process:
            self.accelerator.init_trackers("wadi-distill", config={k: v for k, v in c.options().items()
                                                                   if isinstance(v, (int, float, str, bool))})

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

    def student_spec(self) -> students.AdapterSpec:
        s = self.config.student
        return students.AdapterSpec(s.kind, s.rank, s.preset)

    def fake_spec(self) -> students.AdapterSpec:
        f = self.config.fake
        return students.AdapterSpec(f.kind, f.rank, f.preset)

    def shares_backbone(self, role: str) -> bool:
        """Whether ``role`` ("student" / "fake") is an adapter on the teacher's backbone rather than a copy. The GAN
        term's backward runs through the fake model inside the student's: with gradient checkpointing, whose
        backward runs forwards again, the fake then keeps a copy of its own."""
        spec = self.student_spec() if role == "student" else self.fake_spec()
        gan_through_fake = role == "fake" and self.extras.gan is not None and self.config.gradient_checkpointing
        return spec.kind != "full" and not self.config.separate_copies and not gan_through_fake

    def _network(self, role: str, spec: students.AdapterSpec, weight_dtype) -> torch.nn.Module:
        """The role's adapter on the teacher's backbone (made a :class:`shared.Role` by :meth:`_share_backbone`),
        or a copy of the teacher with it."""
        if self.shares_backbone(role):
            students.add_adapter(self.teacher.unet, spec, role)
            return self.teacher.unet
        model = copy.deepcopy(self.teacher.unet)
        if spec.kind != "full" and weight_dtype != torch.float32:
            model.to(weight_dtype)  # frozen base weights in half precision; adapters stay float32
        students.add_adapter(model, spec, role)
        if self.config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        return model.train()

    def _share_backbone(self) -> None:
        roles = [role for role in ("student", "fake") if self.shares_backbone(role)]
        if not roles:
            return
        backbone = self.teacher.unet
        switch = shared.Switch(backbone)  # every adapter is on it now; none acts outside a role
        if self.config.gradient_checkpointing:
            backbone.enable_gradient_checkpointing()
        backbone.train()  # (SD's UNets have no dropout: the teacher's passes are unchanged)
        for role in roles:
            setattr(self, role, shared.Role(backbone, role, switch))

    def _shard(self) -> None:
        """FSDP: every backbone (the shared one, and the student's and fake's copies if they have their own) is
        sharded over the processes; text encoder and VAE stay whole."""
        backbones = {id(net): net for net in (self.teacher.unet, self.student, self.fake)
                     if not isinstance(net, shared.Role)}
        for net in backbones.values():
            sharding.shard(net, self.accelerator.device, self.accelerator.num_processes)
        self._sharded = list(backbones.values())
        params = [p for net in backbones.values() for p in net.parameters()]
        held, total = sum(sharding.local(p).numel() for p in params), sum(p.numel() for p in params)
        self.log(f"FSDP: the weights are sharded over {self.accelerator.num_processes} processes; this one holds "
                 f"{held:,} of {total:,} backbone and adapter values ({held / total:.0%})")

    def _trained_weights(self) -> str:
        """What each network trains and its share of the UNet's weights, and where their backbones are."""
        adapters = {id(p) for p in self.student_params + self.fake_params}
        total = sum(p.numel() for p in self.teacher.unet.parameters() if id(p) not in adapters)
        parts = []
        for role, spec, params in (("student", self.student_spec(), self.student_params),
                                   ("fake", self.fake_spec(), self.fake_params)):
            count = sum(p.numel() for p in params)
            parts.append(f"{role} {spec.label()} on {spec.preset}: {count / 1e6:.2f}M weights trained, "
                         f"{count / total:.1%} of the UNet's {total / 1e6:.1f}M")
        shared_roles = [role for role in ("student", "fake") if self.shares_backbone(role)]
        if len(shared_roles) == 2:
            layout = "both adapters on the teacher's one backbone"
        elif shared_roles:
            own = "fake" if shared_roles == ["student"] else "student"
            layout = f"the {shared_roles[0]} on the teacher's backbone, the {own} on its own copy"
        else:
            layout = "each on its own copy of the backbone"
        return "; ".join(parts) + f" ({layout})"

    def _model_and_name(self, role: str) -> tuple[torch.nn.Module, students.AdapterSpec, str]:
        """``(model, spec, adapter name)`` of a role's adapter, for the students helpers."""
        net = self.accelerator.unwrap_model(getattr(self, role)) if hasattr(self, "accelerator") else getattr(self, role)
        model = net.backbone if isinstance(net, shared.Role) else net
        return model, self.student_spec() if role == "student" else self.fake_spec(), role

    @torch.no_grad()
    def _precompute_embeddings(self) -> dict[str, torch.Tensor] | None:
        """Text embeddings of every prompt, computed once (the text encoder is frozen)."""
        self.null = self.teacher.encode_prompts([""]).to(self.accelerator.device)
        if len(self.prompts) > 20000:
            return None  # too many to keep: encode per batch instead
        out = {}
        texts = list(dict.fromkeys(self.prompts + self.extras.captions()))
        for start in range(0, len(texts), 256):
            chunk = texts[start:start + 256]
            for prompt, emb in zip(chunk, self.teacher.encode_prompts(chunk)):
                out[prompt] = emb
        return out

    def embed(self, prompts: list[str]) -> torch.Tensor:
        if self._embeddings is not None:
            return torch.stack([self._embeddings[p] for p in prompts])
        with torch.no_grad():
            return self.teacher.encode_prompts(prompts).to(self.accelerator.device)

    # ----- the step

    # Several processes, several micro-batches (--grad-accum): every random draw of a step is made for the whole
    # batch (every micro-batch of every process; fixed by seed and step) and each micro-batch of each process keeps
    # its rows, so P processes x k micro-batches x batch b train as one process with batch P*k*b does (DDP averages
    # the processes' mean losses, accumulation the micro-batches', into the mean over the whole batch).

    def global_batch(self) -> int:
        """The whole batch of a step: every micro-batch of every process."""
        return self.config.batch_size * self.accelerator.num_processes * self.config.grad_accum

    def _rows(self, draw):
        """The rows of this process's current micro-batch of a draw (tensor or list) made for the whole batch."""
        b, acc = self.config.batch_size, self.accelerator
        i = self._micro * acc.num_processes + acc.process_index
        return draw[i * b:(i + 1) * b]

    def _noise(self, shape, gen: torch.Generator) -> torch.Tensor:
        """This process's rows of standard normal noise drawn for the whole batch, ``shape`` per sample."""
        return self._rows(torch.randn((self.global_batch(), *shape), generator=gen))

    def _holding(self, flag: bool) -> int:
        """On how many processes ``flag`` holds."""
        if self.accelerator.num_processes == 1:
            return int(flag)
        return int(self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum"))

    def _everyone(self, flag: bool) -> bool:
        """True when ``flag`` holds on every process (a backward that one process skips would stall the others)."""
        return self._holding(flag) == self.accelerator.num_processes

    def _anyone(self, flag: bool) -> bool:
        """True when ``flag`` holds on at least one process (a stop asked of one process stops them all at the same
        step)."""
        return self._holding(flag) > 0

    def _batch(self, micro: int) -> tuple[list[str], torch.Tensor, torch.Generator, np.random.Generator]:
        """This process's prompts and initial noise of one micro-batch, the generator of the batch's further draws,
        and the generator of the extras' draws (DMD pairs, GAN images: per process when there are several)."""
        c, acc = self.config, self.accelerator
        rng = np.random.default_rng([c.seed, self.step, 0, 0])  # (the same whole batch for every micro-batch)
        prompts = [self.prompts[i] for i in rng.integers(len(self.prompts), size=self.global_batch())]
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        z = self._noise(self.shape, gen)
        if self._shared_draws():
            rng = np.random.default_rng([c.seed, self.step, micro, 1 + acc.process_index])
        return self._rows(prompts), z, gen, rng

    def _shared_draws(self) -> bool:
        """Whether the step's batch is split (processes or micro-batches): the extras then draw per part."""
        return self.global_batch() > self.config.batch_size

    def _eps(self, model, x_t, t, cond_pos, scale):
        """Guided eps of ``model`` (CFG ``scale``): one batched call for both halves; at scale 1 the conditional
        half alone. A v-prediction model's guided output is turned into eps (CFG commutes with that affine map)."""
        guided = scale != 1
        n = x_t.shape[0]
        x = torch.cat([x_t, x_t]) if guided else x_t
        cond = torch.cat([self.null.expand(n, -1, -1), cond_pos]) if guided else cond_pos
        with self.accelerator.autocast():
            out = model(x.to(next(model.parameters()).dtype), torch.cat([t, t]) if guided else t,
                        cond.to(x.dtype)).sample.float()
        if guided:
            uncond, pos = out.chunk(2)
            out = losses.guided(uncond, pos, scale)
        return eps_from_output(out, x_t.float(), self.abar[t], self.prediction)

    def _student_micro_step(self, micro: int) -> Micro:
        """Steps 1 and 2 on one micro-batch: the student's x0 and its gradient (the student's optimiser steps after
        the step's last micro-batch; accelerate's ``accumulate`` counts the calls)."""
        self._micro = micro
        c, acc, device = self.config, self.accelerator, self.accelerator.device
        prompts, z, gen, rng = self._batch(micro)
        n = len(prompts)
        pick = self.extras.edit_batch(prompts, z, rng)
        cond = self.embed(prompts)
        z = z.to(device)

        with acc.accumulate(*self._synced):
            # 1. the student's one-step x0
            with acc.autocast():
                x0 = predict_x0(self.student, self.teacher.scheduler, z, cond).float()
            # 2. the VSD gradient at a re-noised x0, and the student's step along it
            t = self._rows(losses.sample_generator_timesteps(self.global_batch(), gen, device,
                                                             self.generator_t_range()))
            noise = self._noise(x0.shape[1:], gen).to(device)
            x_t = self.teacher.scheduler.add_noise(x0.detach(), noise, t.cpu()).to(device)
            with torch.no_grad():
                eps_real = self._eps(self.teacher.unet, x_t, t, cond, c.guidance)
                eps_fake = self._eps(self.fake, x_t, t, cond, c.guidance if c.fake_guidance is None else
                                     c.fake_guidance)
            grad = losses.score_gradient(x0.detach(), x_t, eps_real, eps_fake, self.abar[t], c.gradient_mode)
            loss_g = losses.generator_loss(x0, grad)
            extra, record = self.extras.student_loss(x0, noise, t, cond, pick)
            loss = loss_g if extra is None else loss_g + extra
            finite = self._everyone(bool(torch.isfinite(loss)) and bool(torch.isfinite(x0).all()))
            if finite:
                with shared.acting(acc.unwrap_model(self.student)):  # checkpointed forwards run again in here
                    acc.backward(loss)
            self._update(self.opt_student, self.student_params, "student", finite)
        record.update(loss_student=loss_g.item(), finite=finite, grad_norm=grad.norm().item() / math.sqrt(n))
        # the fake model's batch: the same x0, and its own generator (per micro-batch or process when the batch is
        # split) for the extras' draws
        extras_gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62))) if self._shared_draws() else gen
        return Micro(micro, prompts, x0.detach(), cond, gen, extras_gen, record)

    def _fake_micro_step(self, micro: Micro, update: int) -> None:
        """Step 3 on one micro-batch: the fake model's gradient on the student's x0 (its optimiser steps after the
        step's last micro-batch, ``fake_updates`` times a step)."""
        self._micro = micro.index
        with self.accelerator.accumulate(*self._synced):
            if update == 0:  # (the GAN term's real images of this micro-batch)
                self.extras.before_fake_updates(micro.prompts, micro.extras_gen)
            loss_f, loss_d = self._fake_update(micro.x0, micro.cond, micro.gen, first=update == 0)
        micro.record["loss_fake"] = loss_f.item()
        micro.record["finite"] = micro.record["finite"] and bool(torch.isfinite(loss_f))
        if update == 0 and self.extras.gan is not None:
            micro.record["loss_discriminator"] = loss_d.item()

    def _fake_update(self, x0: torch.Tensor, cond: torch.Tensor, gen: torch.Generator, first: bool):
        """One step of the fake model's eps loss on the student's x0 (with the extras' terms); returns the loss and
        the discriminator's (zero without the GAN term)."""
        c, acc, device = self.config, self.accelerator, self.accelerator.device
        n = x0.shape[0]
        t = self._rows(losses.sample_fake_timesteps(self.global_batch(), len(self.abar), gen, device))
        noise = self._noise(x0.shape[1:], gen).to(device)
        x_t = self.teacher.scheduler.add_noise(x0, noise, t.cpu()).to(device)
        drop = self._rows(torch.rand(self.global_batch(), generator=gen) < c.null_prompt_share).to(device)
        cond_f = torch.where(drop[:, None, None], self.null.expand(n, -1, -1), cond)
        x_in, t_in, cond_in = self.extras.fake_inputs(x_t, t, cond_f, noise, drop, first)
        with acc.autocast(), self.extras.capture(first):
            dtype = next(self.fake.parameters()).dtype
            pred = self.fake(x_in.to(dtype), t_in, cond_in.to(dtype)).sample
        loss = losses.fake_model_loss(pred[:n], x0, noise, self.abar[t], self.prediction)
        extra, loss_d = self.extras.fake_loss(first)
        if extra is not None:
            loss = loss + extra
        finite = self._everyone(bool(torch.isfinite(loss)))
        if finite:
            with shared.acting(acc.unwrap_model(self.fake)):
                acc.backward(loss)
        self._update(self.opt_fake, self.fake_params, "fake", finite)
        return loss.detach(), loss_d.detach()

    def _update(self, opt, params: list, role: str, finite: bool) -> None:
        """After a micro-batch's backward (``finite``: it ran): at the step's last micro-batch, the optimiser's step
        on the clipped sum of the micro-batches' gradients, unless one of them was not finite, and the gradients
        cleared. (accelerate divides each micro-batch's loss by their number and skips ``zero_grad`` before the
        last.)"""
        good = self._finite[role] and finite
        if self.accelerator.sync_gradients:
            if good:
                self.accelerator.clip_grad_norm_(params, 1.0)
                opt.step()
            good = True  # (the next step starts afresh)
        self._finite[role] = good
        opt.zero_grad(set_to_none=True)

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches) on both networks; returns its record."""
        started = time.perf_counter()
        self._set_learning_rates()
        micros = [self._student_micro_step(m) for m in range(self.config.grad_accum)]  # 1-2, the student's step
        for update in range(self.config.fake_updates):  # 3. the fake model learns the student's distribution
            for micro in micros:
                self._fake_micro_step(micro, update)
        results = [micro.record for micro in micros]
        # 4. bookkeeping
        finite = self._everyone(all(r["finite"] for r in results))
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
        logged = ("loss_student", "loss_fake", "grad_norm") + self.extras.logged()
        values = [float(np.mean([r[k] for r in results])) for k in logged]
        if self.accelerator.num_processes > 1:  # the whole batch's, as one process would log it
            values = self.accelerator.reduce(torch.tensor(values, device=self.accelerator.device), "mean").tolist()
        record = {"step": self.step + 1, **dict(zip(logged, values)),
                  "skipped": not finite, "seconds": time.perf_counter() - started}
        self.history.append(record)
        self.seconds += record["seconds"]
        self.step += 1
        self.accelerator.log({k: v for k, v in record.items() if k not in ("step", "skipped")}, step=self.step)
        return record

    def generator_t_range(self) -> tuple[int, int]:
        """The VSD gradient's timestep range at this step (a pure function of the step, so resuming is exact)."""
        t, steps = self.config.timesteps, self.config.steps
        late = t.late_fraction and self.step >= steps - round(t.late_fraction * steps)
        return t.t_min, t.late_t_max if late else t.t_max

    def _set_learning_rates(self) -> None:
        c = self.config
        factor = lr_factor(c.lr_schedule, self.step, c.steps, c.lr_warmup)
        for opt, base in zip((self.opt_student, self.opt_fake), self.base_lrs):
            for group, lr in zip(opt.param_groups, base):
                group["lr"] = lr * factor

    def run(self, should_stop: Callable[[], bool] = lambda: False,
            on_step: Callable[[dict], None] | None = None) -> Path | None:
        """Train to ``config.steps`` with checkpoints and sample grids; returns the final adapter (None if
        ``should_stop`` ended the run early, after writing a checkpoint). Under several processes it is asked after
        every step on each of them, and all stop when one says so (:mod:`.stopping`)."""
        c = self.config
        bar = tqdm(total=c.steps, initial=self.step, desc="distilling",
                   disable=not (self.progress and self.accelerator.is_main_process))
        if self.step == 0 and c.sample_every:
            self.write_samples()
        first = self.step
        try:
            while self.step < c.steps:
                record = self.train_step()
                if self.step == first + ESTIMATE_AFTER and self.step < c.steps:
                    self._log_estimate(first)
                bar.update(1)
                bar.set_postfix(student=f"{record['loss_student']:.3g}", fake=f"{record['loss_fake']:.3g}")
                if on_step:
                    on_step(record)
                if every(self.step, c.checkpoint_every) and self.step < c.steps and not record["skipped"]:
                    self.save_checkpoint()
                if every(self.step, c.student_every) and self.step < c.steps and not record["skipped"]:
                    self.keep_student()
                if every(self.step, c.sample_every) or (self.step == c.steps and c.sample_every):
                    self.write_samples()
                if self._anyone(should_stop()) and self.step < c.steps:
                    if self.save_checkpoint() is not None:
                        self.log(f"stopped at step {self.step}; continue with --resume")
                    else:
                        self.log(f"stopped at step {self.step}; {self.divergence_advice()}")
                    return None
            return self.finish()
        finally:
            bar.close()
            self.close()

    def _log_estimate(self, first: int) -> None:
        """How long the rest of the run will take on this machine, from this run's latest steps."""
        per_step = float(np.median([r["seconds"] for r in self.history[first + ESTIMATE_AFTER // 2:self.step]]))
        left = self.config.steps - self.step
        self.log(f"measured {per_step:.2f} s a step on this machine: about {left * per_step / 60:.1f} min for the "
                 f"{left} steps left")

    def divergence_advice(self) -> str:
        """Where the last good checkpoint is and the command that continues from it at lower rates (the rates and
        the mixed precision may change on resume; the other settings must not)."""
        c = self.config
        lower = f"--lr-student {c.student.lr / 4:.3g} --lr-fake {c.fake.lr / 4:.3g}" + \
            (" --mixed-precision no" if c.mixed_precision != "no" else "")
        if self.checkpoint_step is not None:
            return (f"The last good checkpoint (step {self.checkpoint_step}) is in {self.out / CHECKPOINT}; continue "
                    f"from it at lower rates: wadi distill --out {self.out} --resume {lower} (and the run's other "
                    "options as before)")
        return (f"No good checkpoint was written before it; start again at lower rates: wadi distill --out "
                f"{self.out} --overwrite {lower} (and the run's other options as before)")

    def weights_are_finite(self) -> bool:
        """On every process (each looks at its own shards under FSDP)."""
        tensors = self.student_params + self.fake_params + (list(self.ema.shadow) if self.ema else [])
        return self._everyone(all(bool(torch.isfinite(sharding.local(t)).all()) for t in tensors))

    def trained_state(self, role: str) -> dict[str, torch.Tensor]:
        """The role's trained tensors, whole (every process calls this under FSDP)."""
        return sharding.gathered(students.trainable_state(*self._model_and_name(role)))

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
        """Teacher (multi-step CFG) vs student (one step) on fixed prompts and seeds. Under FSDP every process
        draws them (each network pass gathers the shards of all processes); the main one writes."""
        if not (self.accelerator.is_main_process or self.sharded):
            return None
        prompts = list(self.world.sample_prompts()) or self.prompts[:8]
        seeds = list(range(len(prompts)))
        guidance = self.config.sample_guidance
        if self._teacher_samples is None or self._teacher_samples[0] != guidance:
            self._teacher_samples = (guidance, MultiStep(steps=25, guidance=guidance)(self.teacher, prompts, seeds))
        try:
            student = self.student_images(prompts, seeds)
        except NonFiniteError:  # a diverging step: the losses say so, and the checkpoint is not replaced
            self.log(f"no sample grid at step {self.step}: the student's images are not finite")
            return None
        if not self.accelerator.is_main_process:
            return None
        grid = side_by_side({"teacher 25 steps": self._teacher_samples[1], f"student, step {self.step}": student},
                            prompts)
        path = fileio.save_png(grid, self.out / "samples" / f"step_{self.step:06d}.png", overwrite=True)
        fileio.save_png(grid, self.out / "samples" / "latest.png", overwrite=True)
        return path

    def write_loss_plot(self) -> Path:
        path = self.out / "loss.png"
        curves = {"student (generator) loss": [r["loss_student"] for r in self.history],
                  "fake score model loss": [r["loss_fake"] for r in self.history],
                  **self.extras.curves(self.history)}
        loss_curves(curves, path,
                    title=f"WaDi distillation ({self.config.student.kind} student, {self.config.fake.kind} fake)")
        fileio.write_text(self.out / "history.json", json.dumps(self.history), overwrite=True)
        return path

    def resume_options(self) -> dict:
        """The options a checkpoint records: every one a resumed run must match or may change."""
        return {name: value for name, value in self.config.options().items() if self.config.rule(name) != "free"}

    def save_checkpoint(self) -> Path | None:
        """Adapter weights, optimiser and EMA states, step and history, written atomically; only a good state (its
        last step's losses and all its weights finite), so that the checkpoint is always one to resume."""
        self.accelerator.wait_for_everyone()
        if not (self.last_step_finite and self.weights_are_finite()):
            self.log(f"no checkpoint at step {self.step}: its losses or weights are not finite; the last good one "
                     f"(step {self.checkpoint_step}) stays" if self.checkpoint_step is not None else
                     f"no checkpoint at step {self.step}: its losses or weights are not finite")
            return None
        # whole tensors (gathered from every process under FSDP), so that any process count can resume
        tensors = {"student": self.trained_state("student"), "fake": self.trained_state("fake"),
                   "opt_student": sharding.optimizer_state(self.opt_student),
                   "opt_fake": sharding.optimizer_state(self.opt_fake),
                   "ema": [sharding.whole(s) for s in self.ema.shadow] if self.ema else None}
        if not self.accelerator.is_main_process:
            return None
        state = {
            "config": self.resume_options(), "processes": self.accelerator.num_processes,
            "step": self.step, "history": self.history, "seconds": self.seconds, **tensors,
            **self.extras.state(),
            "torch_rng": torch.get_rng_state(),
            # a resumed run's grids need not draw the teacher's 25 steps again
            "teacher_samples": None if self._teacher_samples is None else
            {"guidance": self._teacher_samples[0], "images": torch.from_numpy(self._teacher_samples[1])},
        }
        with fileio.atomic_dir(self.out / CHECKPOINT, overwrite=True) as tmp:
            torch.save(state, tmp / STATE_FILE)
        self.checkpoint_step = self.step
        self.write_loss_plot()
        return self.out / CHECKPOINT

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT / STATE_FILE
        if not self._everyone(path.is_file()):  # (the main process has seen it; on several nodes each reads it too)
            raise FileNotFoundError(f"cannot resume: {path} is not there for every process, and each one reads it; "
                                    "put --out on storage that every node sees at the same path, or copy the run "
                                    "folder to that path on each node")
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
        saved = {OLD_OPTIONS.get(k, k): v for k, v in state["config"].items()}  # checkpoints of older versions
        # an option missing from an older checkpoint had its default then; checkpoints from before the late phase
        # had none, and before recipes the recipe followed the teacher, as it does now
        defaults = DistillConfig().options() | {"late_fraction": 0.0, "recipe": self.config.recipe}
        if self._same_whole_batch(state.get("processes", 1), saved.get("batch_size"), saved.get("grad_accum", 1)):
            saved["batch_size"], saved["grad_accum"] = self.config.batch_size, self.config.grad_accum
        for name in OPTIONS:
            rule, now = self.config.rule(name), self.config.options()[name]
            was = saved.get(name, defaults[name])
            if rule == MATCH and was != now:
                raise ResumeMismatch(f"cannot resume {self.out}: its checkpoint was made with {name}={was!r} but "
                                     f"this run asks for {name}={now!r}; use the same settings or another --out")
            if rule == MAY_CHANGE and name in saved and was != now:
                self.log(f"resuming with {name}={now!r} (the checkpoint's run used {was!r})")
        for role in ("student", "fake"):
            model, spec, name = self._model_and_name(role)
            own = students.trainable_state(model, spec, name)  # sharded like the parameters under FSDP
            saved = {key: sharding.shard_like(own[key], value) if key in own else value
                     for key, value in state[role].items()}
            students.load_trainable_state(model, spec, saved, name)
        sharding.load_optimizer_state(self.opt_student, state["opt_student"])
        sharding.load_optimizer_state(self.opt_fake, state["opt_fake"])
        self.extras.load_state(state)
        if self.ema and state["ema"] is not None:
            for s, saved_tensor in zip(self.ema.shadow, state["ema"]):
                s.copy_(sharding.shard_like(s, saved_tensor))
        torch.set_rng_state(state["torch_rng"])
        if state.get("teacher_samples"):
            kept = state["teacher_samples"]
            self._teacher_samples = (kept["guidance"], kept["images"].numpy())
        self.step, self.history, self.seconds = state["step"], state["history"], state["seconds"]
        self.checkpoint_step = self.step
        self.log(f"resumed {self.out} at step {self.step}")

    def _same_whole_batch(self, processes: int, batch_size: int | None, grad_accum: int) -> bool:
        """A run may resume under another process count, micro-batch count or batch size when the whole batch stays
        the same (the draws are made for the whole batch, so the run goes on as it would have); otherwise it is
        refused naming the batch size that keeps it."""
        now, accum = self.accelerator.num_processes, self.config.grad_accum
        if (processes, batch_size, grad_accum) == (now, self.config.batch_size, accum) or batch_size is None:
            return False
        whole, ours = batch_size * processes * grad_accum, self.global_batch()
        was, this = _split(processes, batch_size, grad_accum), _split(now, self.config.batch_size, accum)
        if whole != ours:
            fix = (f"--batch-size {whole // (now * accum)}" if whole % (now * accum) == 0 else
                   f"a process count and --grad-accum whose product divides {whole}")
            raise ResumeMismatch(f"cannot resume {self.out}: its checkpoint was made by {was} = {whole} prompts a "
                                 f"step, but this run has {this} = {ours}; keep {whole} prompts a step ({fix}) or "
                                 "use another --out")
        self.log(f"resuming a run of {was} with {this}: the same {whole} prompts a step")
        return True

    def write_student(self, path: Path) -> None:
        """The student as it stands (its EMA weights if EMA is on) as an adapter file every host loads; every
        process calls this (the weights are gathered under FSDP), the main one writes."""
        if self.ema:
            self.ema.swap()
        try:
            state = self.trained_state("student")
            if self.accelerator.is_main_process:
                extra = {"wadi.teacher": self.config.model, "wadi.steps": str(self.step),
                         "wadi.one_step_t": str(self.final_t), **({"wadi.teacher_unet": self.config.backbone}
                                                                  if self.config.backbone else {})}
                model, spec, name = self._model_and_name("student")
                path.parent.mkdir(exist_ok=True)
                students.save_adapter_file(model, spec, path, name=name, extra=extra, overwrite=True, state=state)
        finally:
            if self.ema:
                self.ema.swap()

    def keep_student(self) -> Path | None:
        """``students/student-stepNNNNNN.safetensors``: this step's student, kept beside the final one (only when
        every weight is finite)."""
        if not self.weights_are_finite():
            self.log(f"no student kept at step {self.step}: its weights are not finite")
            return None
        path = self.out / STUDENTS / f"student-step{self.step:06d}.safetensors"
        self.write_student(path)
        return path

    def finish(self) -> Path:
        """The final ``student.safetensors`` (EMA weights if EMA is on), loss plot, optional merged model."""
        from ..merge import export_merged

        path = self.out / "student.safetensors"
        if not (self.last_step_finite and self.weights_are_finite()):
            self.close()
            raise Diverged(f"the weights are not finite after step {self.step}, so no student was written. "
                           f"{self.divergence_advice()}")
        self.save_checkpoint()  # every process waits there for the others; the main one writes
        self.write_student(path)
        if self.accelerator.is_main_process and self.config.export_merged:
            export_merged(self.config.model, path, self.config.export_merged, overwrite=self.config.overwrite,
                          backbone=self.config.backbone)
        # the processes leave together, once the main one has written (under FSDP torch keeps the gloo group's
        # threads alive to the very end: docs/multi_gpu.md)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        self.close()
        return path


def trainable_share(config: DistillConfig) -> dict[str, float]:
    """Trainable parameters of student and fake, and their share of the teacher's backbone."""
    config = config.resolved()
    unet = load_components(config.model, backbone=config.backbone).unet
    total = sum(p.numel() for p in unet.parameters())
    out = {"unet_parameters": total}
    for role, net in (("student", config.student), ("fake", config.fake)):
        model = copy.deepcopy(unet)
        params = students.add_adapter(model, students.AdapterSpec(net.kind, net.rank, net.preset))
        out[f"{role}_trainable"] = sum(p.numel() for p in params)
        out[f"{role}_share"] = out[f"{role}_trainable"] / total
    return out
