"""``wadi analyze --model BASE --compare OTHER``: how two checkpoints differ in weight norm and weight direction.

Writes into --out: ``analysis.json`` (every number, with the definitions), ``layers.csv`` (one row per layer),
``changes.png`` (norm vs direction change per layer), ``svd_energy.png`` (is the change of direction low-rank?),
``report.md``, and for the swap ablation ``swap.png`` and ``swap_samples.png`` (OTHER with BASE's norms, OTHER
with BASE's directions, sampled and scored). :func:`wadi_core.analysis.analyze` does the work.
"""

from __future__ import annotations

import argparse

from wadi_core.choices import SCHEDULERS

from . import argtypes as A
from .commands import summary
from .eval_cmd import add_metric_args
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("analyze", help=summary("analyze"),
                       description=__doc__)
    p.add_argument("--model", help="the multi-step model (BASE): a diffusers folder, a single-file .safetensors "
                                   "or a Hugging Face Hub id")
    p.add_argument("--compare", help="the model to compare (OTHER): a diffusers folder, a single-file checkpoint, or "
                                     "an adapter / student file for BASE (LoRaD, LoRA, DoRA or full fine-tune)")
    A.backbone_option(p, "--model (BASE)")
    p.add_argument("old_model", nargs="?", help=argparse.SUPPRESS)  # the positional BASE OTHER of before
    p.add_argument("old_compare", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out", default="wadi-analysis", help="output folder (default: wadi-analysis)")
    p.add_argument("--convs", action="store_true", help="also analyse convolutions (rows flattened)")
    p.add_argument("--no-swap", action="store_true", help="skip the swap ablation (no sampling)")
    p.add_argument("--pipeline", help="a diffusers SD folder whose text encoder, VAE and scheduler the swap "
                                      "ablation samples with (default: BASE, when it is such a folder)")
    p.add_argument("--sampler", default="one-step", choices=("one-step", *SCHEDULERS),
                   help="how the swap ablation samples (default one-step: OTHER is a distilled model)")
    p.add_argument("--steps", type=A.positive_int, default=25, help="steps of a multi-step --sampler")
    p.add_argument("--guidance", type=A.guidance, default=3.0, help="CFG scale of a multi-step --sampler")
    p.add_argument("--prompts", help="prompt file for the swap ablation (default: held-out shapes prompts)")
    p.add_argument("--num-prompts", type=A.positive_int, default=128)
    p.add_argument("--batch-size", type=A.positive_int, default=32)
    p.add_argument("--seed", type=A.seed, default=0)
    add_metric_args(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


@writes("out")
def run(args) -> int:
    from wadi_core.analysis import Swap, analyze
    from wadi_core.evaluate import Metrics

    base, other = args.model or args.old_model, args.compare or args.old_compare
    if not base or not other:
        raise ValueError("give the two models: --model BASE --compare OTHER")
    swap = Swap(not args.no_swap, args.pipeline, args.sampler, args.steps, args.guidance, args.prompts,
                args.num_prompts, args.batch_size, args.seed, Metrics(args.fid_features, args.reference, args.clip))
    out = analyze(base, other, args.out, args.convs, swap, args.overwrite, progress=not args.quiet, report=print,
                  backbone=args.backbone)
    files = "analysis.json, layers.csv, changes.png, svd_energy.png, report.md"
    print(f"wrote {out}/: {files}" + (", swap.png, swap_samples.png" if (out / "swap.png").is_file() else ""))
    return 0
