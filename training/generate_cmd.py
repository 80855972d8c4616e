"""``wadi generate``: images from a model (the embedded default unless --model is given)."""

from __future__ import annotations

import time
from pathlib import Path

from wadi_core import fileio
from wadi_core.images import labelled_grid, save_pngs
from wadi_core.prompts import read_prompts
from wadi_core.sampling import SAMPLERS, sample
from wadi_core.shapes.components import MODEL_DIR, load_components


def add_model_args(p) -> None:
    p.add_argument("--model", default=str(MODEL_DIR),
                   help="a diffusers SD folder (default: the embedded shapes model)")
    p.add_argument("--steps", type=int, default=25, help="sampler steps (default 25)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="image i gets seed SEED + i")


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images (multi-step sampling with CFG)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    p.add_argument("--prompts", help="a prompt file (one per line, or JSONL with a caption field)")
    p.add_argument("--num-per-prompt", type=int, default=1)
    p.add_argument("--out", required=True, help="output folder for the PNGs and grid.png")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_model_args(p)
    p.set_defaults(run=run)


def collect_prompts(args) -> list[str]:
    prompts = list(args.prompt) + (read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("no prompts given; use --prompt TEXT (repeatable) or --prompts FILE")
    if args.num_per_prompt < 1:
        raise ValueError("--num-per-prompt must be at least 1")
    return [p for p in prompts for _ in range(args.num_per_prompt)]


def run(args) -> int:
    prompts = collect_prompts(args)
    out = Path(args.out)
    components = load_components(args.model)
    seeds = [args.seed + i for i in range(len(prompts))]
    start = time.perf_counter()
    images = sample(components, prompts, seeds, args.steps, args.guidance, args.sampler, args.batch_size,
                    progress=not args.quiet)
    seconds = time.perf_counter() - start
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        save_pngs(images, prompts, tmp, seeds)
        labelled_grid(images, [f"{p} (seed {s})" for p, s in zip(prompts, seeds)]).save(tmp / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {out}: {seconds:.1f} s, "
          f"{len(images) / seconds:.1f} images/s ({args.sampler}, {args.steps} steps, guidance {args.guidance})")
    return 0
