"""``wadi generate``: images from a model (the embedded default unless --model is given): multi-step
sampling with CFG, or one step with a distilled student (``--student ADAPTER`` or ``--one-step``
for a merged student folder)."""

from __future__ import annotations

import time

from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR
from wadi_core.choices import SCHEDULERS

from . import argtypes as A
from .commands import summary
from .outputs import writes


def add_model_args(p) -> None:
    p.add_argument("--model", default=str(MODEL_DIR),
                   help=f"{A.MODEL_PATHS} (default: the embedded shapes model)")
    p.add_argument("--student", action="append", default=[], metavar="ADAPTER[:STRENGTH]",
                   help="a distilled student (student.safetensors from wadi distill, or any LoRaD file) on --model: "
                        "one-step sampling. Repeat to stack LoRaD adapters")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="a learned token (wadi reversion's reversion.safetensors or a one-vector textual-inversion "
                        "file, whose token is its file name); repeat for several")
    A.backbone_option(p)
    p.add_argument("--one-step", action="store_true",
                   help="sample --model in one step (a merged student, e.g. from wadi distill --export-merged)")
    p.add_argument("--steps", type=A.positive_int, default=25, help="sampler steps of multi-step sampling (default 25)")
    p.add_argument("--guidance", type=A.guidance, default=3.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--sampler", default="ddim", choices=SCHEDULERS)
    p.add_argument("--batch-size", type=A.positive_int, default=64)
    p.add_argument("--seed", type=A.seed, default=0, help="image i gets seed SEED + i")
    A.device_option(p)
    A.dtype_option(p)


def is_one_step(args) -> bool:
    return bool(args.student) or args.one_step


def load_generator(args) -> tuple:
    """``(generator, sampler, description)`` for the model, students and tokens the arguments name."""
    from wadi_core import students
    from wadi_core.merge import parse_adapter_spec
    from wadi_core.sampling import build_generator

    adapters = [parse_adapter_spec(spec) for spec in args.student]
    generator = build_generator(args.model, adapters, args.embedding, one_step=is_one_step(args),
                                backbone=args.backbone, device=args.device, dtype=args.dtype)
    if generator.tokens:
        print(f"tokens for the prompts: {', '.join(generator.tokens)}")
    for path, _ in adapters:
        teacher = students.other_teacher(path, args.model)
        if teacher:  # allowed (as a LoRA on another checkpoint), but rarely meant with the default --model
            print(f"note: {path} was distilled from {teacher}, and is applied to {args.model} as asked; "
                  f"pass --model {teacher} to sample it on its own teacher")
    sampler = generator.default_sampler(args.steps, args.guidance, args.sampler, args.batch_size)
    description = sampler.describe() + (f" with {', '.join(args.student)}" if args.student else "")
    return generator, sampler, description


def register(sub) -> None:
    p = sub.add_parser("generate", help=summary("generate"))
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts", help="a prompt file (one per line, or JSONL with a caption field)")
    p.add_argument("--num-per-prompt", type=A.positive_int, default=1)
    p.add_argument("--out", required=True, help="output folder for the PNGs and grid.png")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_model_args(p)
    p.set_defaults(run=run)


def collect_prompts(args) -> list[str]:
    from wadi_core.prompts import read_prompts

    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("no prompts given; use --prompt TEXT (repeatable) or --prompts FILE")
    if args.num_per_prompt < 1:
        raise ValueError("--num-per-prompt must be at least 1")
    return [p for p in prompts for _ in range(args.num_per_prompt)]


@writes("out")
def run(args) -> int:
    from wadi_core.images import write_images

    prompts = collect_prompts(args)
    generator, sampler, description = load_generator(args)
    seeds = [args.seed + i for i in range(len(prompts))]
    start = time.perf_counter()
    images = generator(prompts, seeds, sampler, progress=not args.quiet)
    seconds = time.perf_counter() - start
    write_images(args.out, images, prompts, seeds, args.overwrite, [f"{p} (seed {s})" for p, s in zip(prompts, seeds)])
    print(f"wrote {len(images)} images and grid.png to {args.out}: {seconds:.1f} s, "
          f"{len(images) / seconds:.1f} images/s ({description})")
    return 0
