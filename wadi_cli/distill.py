"""``wadi distill``: the command line of :class:`wadi_core.distill.Distiller` (WaDi distillation of a multi-step
teacher into a one-step student), on one CPU or under ``accelerate launch -m wadi_cli distill`` on many GPUs."""

from __future__ import annotations

import argparse

from wadi_core.distill.config import GAN_FEATURES, GRADIENT_MODES, KINDS, LR_SCHEDULES, PRECISIONS, DistillConfig
from wadi_core.distill.recipes import RECIPES

from . import argtypes as A
from .commands import summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DistillConfig().options()
    p.add_argument("--out", required=True, help="output folder (checkpoint, samples, student.safetensors)")
    p.add_argument("--model", help="the teacher: a diffusers SD folder, a single-file SD1.x, SD2.x or SDXL "
                                   "checkpoint, a PixArt-style DiT folder or a Hugging Face Hub id (owner/name) "
                                   "(default: the embedded shapes model)")
    A.hidden_alias(p, "--teacher", "model")
    A.backbone_option(p, "the teacher (--model)")
    p.add_argument("--recipe", choices=tuple(RECIPES),
                   help="the table of defaults for what is not given (default: the teacher's family's, recognised "
                        "from its weights: shapes for the embedded world, paper for SD1.x/2.x and PixArt)")
    p.add_argument("--prompts", help="prompt file: one per line, or JSONL with a 'caption' field "
                                     "(default for the embedded model: its training prompts)")
    p.add_argument("--student-kind", default=d["student_kind"], choices=KINDS, help="the student's adapter kind")
    A.hidden_alias(p, "--student", "student_kind", choices=KINDS)
    p.add_argument("--student-rank", type=A.positive_int, help="student rank (paper 256; embedded default 24)")
    p.add_argument("--student-preset", default=d["student_preset"],
                   help="the layers the student adapts: a preset name (wadi presets) or glob patterns")
    p.add_argument("--fake-kind", default=d["fake_kind"], choices=KINDS, help="the fake score model's adapter kind")
    A.hidden_alias(p, "--fake", "fake_kind", choices=KINDS)
    p.add_argument("--fake-rank", type=A.positive_int, help="fake rank (paper 32; embedded default 8)")
    p.add_argument("--fake-preset", default=d["fake_preset"],
                   help="the layers the fake score model adapts: a preset name (wadi presets) or glob patterns")
    p.add_argument("--steps", type=A.positive_int, help="optimiser steps (embedded default 800)")
    p.add_argument("--batch-size", type=A.positive_int,
                   help="prompts per micro-batch and process (default: the recipe's whole batch, paper 128, embedded "
                        "16, split over the processes and micro-batches)")
    p.add_argument("--grad-accum", type=A.positive_int, default=d["grad_accum"],
                   help="micro-batches per optimiser step: N of --batch-size B train as one batch of N*B, with the "
                        "activation memory of B (1: none)")
    p.add_argument("--lr-student", type=A.learning_rate,
                   help="student learning rate (LoRaD: paper 1e-4, embedded 5e-3; embedded LoRA/DoRA 1e-3, full 1e-4; "
                        "full, real teacher 1e-5)")
    p.add_argument("--lr-schedule", default=d["lr_schedule"], choices=LR_SCHEDULES,
                   help="learning-rate schedule of both networks over --steps (cosine and linear end at 0)")
    p.add_argument("--lr-warmup-steps", dest="lr_warmup", type=A.count, default=d["lr_warmup"],
                   help="steps of linear warmup before the schedule")
    p.add_argument("--lr-fake", type=A.learning_rate,
                   help="fake model learning rate (LoRaD: 1e-2; embedded LoRA/DoRA 3e-3, full 5e-4; full, real teacher "
                        "1e-5)")
    p.add_argument("--guidance", type=A.vsd_guidance,
                   help="CFG of teacher and fake in the VSD gradient (paper 1.5; embedded 2)")
    p.add_argument("--fake-guidance", type=A.vsd_guidance,
                   help="CFG of the fake model alone (paper: the same as --guidance, as in the paper's script; "
                        "embedded 1, which targets the teacher's guided distribution, as in DMD2)")
    p.add_argument("--gradient-mode", default=d["gradient_mode"], choices=GRADIENT_MODES,
                   help="wadi: the eps-space gradient weighted by sigma_t^2; dmd2: DMD2's x0-space normalisation")
    p.add_argument("--generator-t-min", type=A.count, default=d["generator_t_min"],
                   help="lowest timestep of the VSD gradient (spec: 20)")
    p.add_argument("--generator-t-max", type=A.count, default=d["generator_t_max"],
                   help="highest timestep of the VSD gradient (spec: 980)")
    p.add_argument("--late-fraction", type=A.fraction, metavar="F",
                   help="for the last F of the steps, draw the VSD gradient's timesteps up to --late-t-max only, a "
                        "low-noise phase that refines colours (paper 0 = off; embedded 0.375)")
    p.add_argument("--late-t-max", type=A.count, metavar="T",
                   help="highest timestep of the VSD gradient in the late phase (embedded 400)")
    p.add_argument("--fake-updates", type=A.positive_int,
                   help="fake score model steps per student step (paper 1; embedded default 3; DMD2 uses 5)")
    p.add_argument("--regression-pairs", type=A.count, default=d["regression_pairs"], metavar="N",
                   help="DMD's regression loss (not part of WaDi; off by default): make N teacher samples before "
                        "training and pull the student's one-step output for their noise toward them")
    p.add_argument("--regression-weight", type=A.non_negative, default=d["regression_weight"],
                   help="weight of the regression loss (with --regression-pairs)")
    p.add_argument("--gan-weight", type=A.non_negative, default=d["gan_weight"],
                   help="DMD2's GAN term (not part of WaDi; 0 = off): weight of the student's GAN loss against a "
                        "head on the fake model's middle features")
    p.add_argument("--gan-disc-weight", type=A.non_negative, default=d["gan_disc_weight"],
                   help="weight of the discriminator loss in the fake model's update")
    p.add_argument("--gan-images", metavar="FOLDER",
                   help="real images for the GAN term (captions in same-named .txt files); the embedded world "
                        "renders its own")
    p.add_argument("--gan-head-lr", type=A.learning_rate, default=d["gan_head_lr"],
                   help="learning rate of the GAN term's discriminator head")
    p.add_argument("--gan-features", default=d["gan_features"], choices=GAN_FEATURES,
                   help="where the discriminator head reads the fake model: mid (the UNet's mid block, as DMD2) or "
                        "last (its last up block, full latent resolution)")
    p.add_argument("--ema", type=A.fraction, help="EMA decay of the student adapter, 0 = off (paper's script: off, "
                                             "optionally 0.999; embedded default 0.99)")
    p.add_argument("--seed", type=A.seed, default=d["seed"], help="seed of the adapters' initialisation and every draw")
    p.add_argument("--mixed-precision", default=d["mixed_precision"], choices=PRECISIONS,
                   help="half-precision frozen weights and autocast; adapters and their optimiser stay float32")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the UNet's activations in backward: less memory, more time")
    p.add_argument("--separate-copies", action="store_true",
                   help="give student and fake their own copies of the teacher's backbone instead of adapters on the "
                        "one shared backbone (same results, about 3x the weights' memory; for comparisons)")
    p.add_argument("--offload-optimizer", action="store_true",
                   help="keep AdamW's state (two moments and a copy of each trained weight) in host memory and "
                        "step there: same results, a GPU holds twice the trained weights' float32 size less, each "
                        "step copies them between GPU and host three times")
    p.add_argument("--checkpoint-every", type=A.count, default=d["checkpoint_every"],
                   help="steps between resumable checkpoints, 0 = none before the end")
    p.add_argument("--student-every", type=A.count, default=d["student_every"],
                   help="also keep the student of every N-th step as students/student-stepNNNNNN.safetensors (its "
                        "EMA weights), 0 = only the final student.safetensors")
    p.add_argument("--sample-every", type=A.count, default=d["sample_every"],
                   help="steps between sample grids (also drawn at the start and the end), 0 = none")
    p.add_argument("--max-bad-steps", type=A.positive_int, default=d["max_bad_steps"],
                   help="stop after this many consecutive NaN/Inf steps")
    p.add_argument("--export-merged", help="also write the teacher folder with the student merged into its UNet")
    p.add_argument("--report-to", default=d["report_to"], choices=("tensorboard", "none"),
                   help="where losses go besides history.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def options_from_args(args) -> dict:
    """The distillation options among the parsed arguments (every flag of :func:`add_arguments` but --quiet)."""
    names = set(DistillConfig().options())
    return {k: v for k, v in vars(args).items() if k in names}


def register(sub) -> None:
    p = sub.add_parser("distill", help=summary("distill"))
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from wadi_core.distill import Distiller
    from wadi_core.distill.stopping import StopOnSignals

    distiller = Distiller(DistillConfig.from_options(**options_from_args(args)), progress=not args.quiet)
    with StopOnSignals(distiller.log) as stop:  # Ctrl-C, SIGTERM, SIGUSR1: a checkpoint after the step, then stop
        path = distiller.run(should_stop=stop)
    if path is None:
        return stop.status
    samples = f"samples in {distiller.out / 'samples'}, " if distiller.config.sample_every else ""
    distiller.log(f"wrote {path} ({distiller.step} steps, {distiller.seconds / 60:.1f} min of training); "
                  f"{samples}losses in {distiller.out / 'loss.png'}")
    return 0
