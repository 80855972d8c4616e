"""``wadi eval``: prompt accuracy, domain FID and speed of a model on held-out prompts."""

from __future__ import annotations

import json

from .generate_cmd import add_model_args, is_one_step, load_generator
from . import argtypes as A
from .commands import summary
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("eval", help=summary("eval"))
    p.add_argument("--prompts", help="a prompt file (default: held-out prompts of the shapes world)")
    p.add_argument("--num-prompts", type=A.positive_int, default=512)
    p.add_argument("--split", default="heldout", choices=("heldout", "train"))
    p.add_argument("--floor", action="store_true", help="also report the FID of a second set of renders")
    p.add_argument("--untrained", action="store_true",
                   help="also evaluate the same architecture with an untrained UNet (the FID ceiling)")
    add_metric_args(p)
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--grid", help="write a labelled grid of the first 64 images here (PNG)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    add_model_args(p)
    p.set_defaults(run=run)


def add_metric_args(p) -> None:
    p.add_argument("--fid-features", help="feature network for FID on real models (.pt2 from torch.export, "
                                          "e.g. an Inception); default: the shapes feature net")
    p.add_argument("--reference", help="folder of real images to compute FID against (real models)")
    p.add_argument("--clip", help="a CLIP folder (transformers CLIPModel) to report CLIP score")




@writes("out", "grid")
def run(args) -> int:
    from wadi_core import fileio
    from wadi_core.evaluate import Metrics, evaluate_model
    from wadi_core.images import labelled_grid
    from wadi_core.prompts import read_prompts
    from wadi_core.shapes import sample_prompts

    if args.untrained and is_one_step(args):
        raise ValueError("--untrained compares against the multi-step sampler; leave out --student/--one-step")
    prompts = read_prompts(args.prompts) if args.prompts else \
        [p.caption() for p in sample_prompts(args.num_prompts, args.split, seed=args.seed)]
    generator, sampler, description = load_generator(args)
    result, images = evaluate_model(generator, sampler, prompts, args.seed,
                                    Metrics(args.fid_features, args.reference, args.clip), args.floor,
                                    args.untrained, progress=not args.quiet, report=print)
    report = {"model": str(args.model), "students": list(args.student), "sampling": description,
              "prompts": len(prompts), "seed": args.seed, **result}
    if args.grid:
        with fileio.atomic_file(args.grid, args.overwrite) as tmp:
            labelled_grid(images[:64], prompts[:64]).save(tmp, format="PNG")
    if args.out:
        fileio.write_text(args.out, json.dumps(report, indent=1), args.overwrite)
        print(f"wrote {args.out}")
    return 0
