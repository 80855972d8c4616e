"""``wadi eval``: prompt accuracy, domain FID and speed of a model on held-out prompts."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wadi_core import fileio
from wadi_core.evaluate import evaluate_images, load_image_folder, render_floor, timed
from wadi_core.metrics import load_feature_network
from wadi_core.images import labelled_grid
from wadi_core.prompts import read_prompts
from wadi_core.sampling import image_size
from wadi_core.shapes import sample_prompts

from .generate_cmd import add_model_args, is_one_step, load_generator
from . import argtypes as A
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: prompt accuracy, domain FID, images/s")
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


def metric_inputs(args, components) -> tuple[object, object]:
    """``(feature network or None, reference images or None)`` that --fid-features / --reference name."""
    feature_net = load_feature_network(args.fid_features) if args.fid_features else None
    reference = None
    if args.reference:
        reference = load_image_folder(args.reference, image_size(components))
    return feature_net, reference


def summary_line(name: str, result: dict) -> str:
    acc = result["prompt_accuracy"]
    parts = [f"{name}:"]
    for key in ("single/color", "single/shape", "single/size", "single/position", "relation/axis", "relation/relation",
                "all"):
        if key in acc:
            parts.append(f"{key} {acc[key]:.1%}")
    if "fid" in result:
        parts.append(f"FID {result['fid']:.2f}")
    if "clip_score" in result:
        parts.append(f"CLIP score {result['clip_score']:.2f}")
    if "images_per_second" in result:
        parts.append(f"{result['images_per_second']:.1f} img/s")
    return "  ".join(parts)


@writes("out", "grid")
def run(args) -> int:
    if args.untrained and is_one_step(args):
        raise ValueError("--untrained compares against the multi-step sampler; leave out --student/--one-step")
    for path in (args.out, args.grid):
        if path:
            fileio.check_output(path, args.overwrite)
    prompts = read_prompts(args.prompts) if args.prompts else \
        [p.caption() for p in sample_prompts(args.num_prompts, args.split, seed=args.seed)]
    generator, sampler, description = load_generator(args)
    components = generator.components
    seeds = [args.seed + i for i in range(len(prompts))]
    feature_net, reference = metric_inputs(args, components)

    def measure(images):
        return evaluate_images(images, prompts, args.seed, feature_net, reference, args.clip)

    images, seconds = timed(lambda: generator(prompts, seeds, sampler, progress=not args.quiet))
    report = {"model": str(args.model), "students": list(args.student), "sampling": description,
              "prompts": len(prompts), "seed": args.seed,
              "model_result": dict(measure(images), seconds=seconds, images_per_second=len(prompts) / seconds)}
    print(summary_line("model", report["model_result"]))
    if args.floor:
        report["render_floor_fid"] = render_floor(prompts, args.seed)
        print(f"renders vs renders (floor): FID {report['render_floor_fid']:.2f}")
    if args.untrained:
        from diffusers import UNet2DConditionModel
        torch.manual_seed(args.seed)
        untrained = type(components)(**{**components.__dict__,
                                        "unet": UNet2DConditionModel.from_config(components.unet.config).eval()})
        report["untrained_result"] = measure(sampler(untrained, prompts, seeds, progress=not args.quiet))
        print(summary_line("untrained UNet (ceiling)", report["untrained_result"]))
    if args.grid:
        with fileio.atomic_file(args.grid, args.overwrite) as tmp:
            labelled_grid(images[:64], prompts[:64]).save(tmp, format="PNG")
    if args.out:
        with fileio.atomic_file(args.out, args.overwrite) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0
