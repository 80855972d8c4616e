"""``wadi highres``: one-step images above the training resolution, directly or in two stages."""

from __future__ import annotations

import time

from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR

from . import argtypes as A
from .commands import summary
from .generate_cmd import collect_prompts
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("highres", help=summary("highres"))
    p.add_argument("--model", default=str(MODEL_DIR), help=f"the teacher: {A.MODEL_PATHS}")
    p.add_argument("--student", help="the student (student.safetensors of wadi distill)")
    p.add_argument("--unet", dest="backbone", metavar="FILE",
                   help="or a released one-step UNet (a state dict of the whole UNet, e.g. the authors' "
                        "rotated_unet-sdv1-5.safetensors) on --model; the teacher refines with --model's own")
    p.add_argument("--prompt", action="append", default=[])
    p.add_argument("--prompts")
    p.add_argument("--num-per-prompt", type=A.positive_int, default=1)
    p.add_argument("--scale", type=A.positive_int, default=2, help="resolution factor (default 2)")
    p.add_argument("--route", default="two-stage", choices=("one-step", "two-stage"),
                   help="one-step: the student on a larger latent; two-stage: student at the base size, upscale, "
                        "then a short teacher refinement")
    p.add_argument("--strength", type=A.open_fraction, default=0.3, help="two-stage: share of the schedule to re-noise")
    p.add_argument("--refine-steps", type=A.positive_int, default=15,
                   help="two-stage: DDIM schedule length; strength * steps of them run")
    p.add_argument("--guidance", type=A.guidance, default=3.0)
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    A.device_option(p)
    A.dtype_option(p)
    p.set_defaults(run=run)


@writes("out")
def run(args) -> int:
    from wadi_core.images import write_images
    from wadi_core.sampling import OneStep, TwoStage, build_generator

    if not args.student and not args.backbone:
        raise ValueError("give the one-step model: --student FILE (an adapter) or --unet FILE (a released UNet)")
    prompts = collect_prompts(args)
    placed = dict(device=args.device, dtype=args.dtype)
    student = build_generator(args.model, [(args.student, 1.0)] if args.student else [], backbone=args.backbone,
                              one_step=True, **placed)
    sampler = OneStep(scale=args.scale) if args.route == "one-step" else \
        TwoStage(build_generator(args.model, **placed).components, args.scale, args.strength, args.refine_steps,
                 args.guidance)
    seeds = [args.seed + i for i in range(len(prompts))]
    start = time.perf_counter()
    images = student(prompts, seeds, sampler, progress=args.route != "one-step")
    seconds = time.perf_counter() - start
    write_images(args.out, images, prompts, seeds, args.overwrite)
    print(f"wrote {len(images)} images of {images.shape[1]}x{images.shape[2]} to {args.out} ({args.route}, "
          f"{seconds / len(images) * 1000:.0f} ms per image)")
    return 0
