"""``wadi analyze BASE OTHER``: how two checkpoints differ in weight norm and weight direction.

Writes into --out: ``analysis.json`` (every number, with the definitions), ``layers.csv`` (one row
per layer), ``changes.png`` (norm vs direction change per layer), ``svd_energy.png`` (is the
change of direction low-rank?), ``report.md``, and for the swap ablation ``swap.png`` and
``swap_samples.png`` (OTHER with BASE's norms, OTHER with BASE's directions, sampled and scored).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from wadi_core import analysis, fileio
from wadi_core.sampling import onestep
from wadi_core.analysis_plots import change_bars, energy_plot, swap_chart
from wadi_core.evaluate import evaluate_images
from wadi_core.images import side_by_side
from wadi_core.prompts import read_prompts
from wadi_core.sampling import SAMPLERS, sample
from wadi_core.shapes import sample_prompts
from wadi_core.models import load_components
from wadi_core.weight_sources import WeightSource, open_source

from .eval_cmd import add_metric_args, metric_inputs, summary_line
from . import argtypes as A
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("analyze", help="norm vs direction change of the weights of two checkpoints (paper Fig. 1)",
                       description=__doc__)
    p.add_argument("base", help="the multi-step model: a diffusers folder or a single-file .safetensors")
    p.add_argument("other", help="the model to compare: a diffusers folder, a single-file checkpoint, or an "
                                 "adapter / student file for BASE (LoRaD, LoRA, DoRA or full fine-tune)")
    p.add_argument("--out", default="wadi-analysis", help="output folder (default: wadi-analysis)")
    p.add_argument("--convs", action="store_true", help="also analyse convolutions (rows flattened)")
    p.add_argument("--no-swap", action="store_true", help="skip the swap ablation (no sampling)")
    p.add_argument("--pipeline", help="a diffusers SD folder whose text encoder, VAE and scheduler the swap "
                                      "ablation samples with (default: BASE, when it is such a folder)")
    p.add_argument("--sampler", default="one-step", choices=("one-step", *SAMPLERS),
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


def swap_plan(args, base: WeightSource) -> tuple[Path | None, str]:
    """The pipeline folder to sample the swap models with, or ``None`` and the reason it is skipped."""
    if args.no_swap:
        return None, "skipped (--no-swap)"
    if base.checkpoint.backbone != "unet":
        return None, ("skipped: wadi samples SD-style UNet pipelines only so far; the weight analysis of this DiT "
                      "is complete")
    if args.pipeline:
        return Path(args.pipeline), ""
    if base.checkpoint.kind == "diffusers-pipeline":
        return base.checkpoint.path, ""
    return None, ("skipped: BASE is not a diffusers pipeline folder, so there is no text encoder or VAE to sample "
                  "with; pass --pipeline DIR (a diffusers SD folder of the same model)")


def swap_prompts(args, base: WeightSource) -> list[str]:
    if args.prompts:
        prompts = read_prompts(args.prompts)
    elif base.checkpoint.family != "shapes":
        raise ValueError("the swap ablation needs prompts for this model: pass --prompts FILE "
                         "(or --no-swap to analyse the weights only)")
    else:
        prompts = [p.caption() for p in sample_prompts(args.num_prompts, "heldout", seed=args.seed)]
    if len(prompts) < 4:
        raise ValueError(f"the swap ablation scores its samples with FID and k-NN precision/recall, which need at "
                         f"least 4 prompts; got {len(prompts)}")
    return prompts


def run_swap(args, base: WeightSource, other: WeightSource, pipeline: Path, layers: list[str],
             prompts: list[str]) -> tuple[list, dict]:
    """Sample and score OTHER, the two swap models and BASE with one sampler and the same seeds."""
    seeds = [args.seed + i for i in range(len(prompts))]
    components = load_components(pipeline)
    feature_net, reference = metric_inputs(args, components)
    models = [("OTHER", "OTHER", None, other), ("BASE norms + OTHER directions", "BASE norms", "base-norms", other),
              ("OTHER norms + BASE directions", "BASE dirs", "base-directions", other), ("BASE", "BASE", None, base)]
    rows, images = [], {}
    for label, column, swap, source in models:
        components.unet.load_state_dict(analysis.model_state(base, source, swap, layers, progress=not args.quiet))
        if args.sampler == "one-step":
            generated = onestep.generate(components, prompts, seeds, args.batch_size, progress=not args.quiet)
        else:
            generated = sample(components, prompts, seeds, args.steps, args.guidance, args.sampler, args.batch_size,
                               progress=not args.quiet)
        result = evaluate_images(generated, prompts, args.seed, feature_net, reference, args.clip)
        rows.append(dict(result, label=label, swap=swap, description=analysis.SWAPS.get(swap, label)))
        images[column] = generated[:8]
        print(summary_line(label, result))
    return rows, {"prompts": prompts[:8], "images": images}


def report_text(args, summary: dict, swap_rows: list, swap_note: str, num_prompts: int) -> str:
    lines = [f"# Weight analysis: {args.other} against {args.base}", "",
             f"{summary['layers']} layers analysed, {summary['changed_layers']} of them changed.", "",
             f"- Row norms changed by {summary['norm_change_mean']:.3%} on average (relative).",
             f"- Row directions turned by {summary['direction_change_mean']:.3e} rad on average "
             f"(1 - cos = {summary['one_minus_cos_mean']:.3e}).",
             f"- Direction change / norm change = {summary['direction_over_norm']:.2f}; direction changed more "
             f"than norm in {summary['layers_direction_exceeds_norm']} of {summary['layers']} layers.",
             f"- For scale: a change of the same size in a random direction would give a ratio of about "
             f"{summary['isotropic_ratio_mean']:.1f} (high-dimensional steps are mostly orthogonal to the row), "
             "so a measured ratio well above that means the norms were kept on purpose."]
    if "rank_fraction_for_energy_mean" in summary:
        lines.append(f"- The change of direction is low-rank to the extent that {summary['energy_threshold']:.0%} of "
                     f"its energy needs {summary['rank_fraction_for_energy_mean']:.1%} of the rank on average; "
                     f"30% of the rank keeps {summary['energy_at_30_percent_rank_mean']:.1%}.")
    lines += ["", "## Swap ablation", ""]
    if swap_rows:
        lines += ["| model | " + " | ".join(k for k in ("fid", "clip_score") if k in swap_rows[0]) + " | accuracy (all) |",
                  "|---|" + "---|" * (sum(k in swap_rows[0] for k in ("fid", "clip_score")) + 1)]
        for row in swap_rows:
            values = [f"{row[k]:.1f}" for k in ("fid", "clip_score") if k in row]
            lines.append(f"| {row['label']} | " + " | ".join(values) +
                         f" | {row['prompt_accuracy'].get('all', float('nan')):.1%} |")
        lines += ["", f"Sampler: {args.sampler}; {num_prompts}"
                      " prompts. If swapping in BASE's directions hurts far more than swapping in its norms, the "
                      "quality of OTHER lives in the directions of its weights."]
    else:
        lines.append(swap_note)
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in analysis.DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


@writes("out")
def run(args) -> int:
    out = fileio.check_output(args.out, args.overwrite)
    base = open_source(args.base)
    other = open_source(args.other, base)
    pipeline, swap_note = swap_plan(args, base)
    prompts = swap_prompts(args, base) if pipeline is not None else []  # a bad prompt file fails before the work
    layers = analysis.analyse(base, other, args.convs, progress=not args.quiet)
    summary = analysis.summary(layers)
    print(f"{summary['layers']} layers: norm change {summary['norm_change_mean']:.3e}, direction change "
          f"{summary['direction_change_mean']:.3e} rad, ratio {summary['direction_over_norm']:.2f}")
    swap_rows, samples = [], None
    if pipeline is not None:
        weight_names = [f"{layer.name}.weight" for layer in layers]
        swap_rows, samples = run_swap(args, base, other, pipeline, weight_names, prompts)
    else:
        print(f"swap ablation {swap_note}")
    title = f"{Path(args.other).name} vs {Path(args.base).name}"
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        (tmp / "analysis.json").write_text(json.dumps({
            "base": base.label, "other": other.label, "convs": args.convs, "definitions": analysis.DEFINITIONS,
            "rank_fractions": analysis.RANK_FRACTIONS, "summary": summary,
            "layers": [vars(layer) for layer in layers],
            "swap": {"sampler": args.sampler, "rows": swap_rows, "note": swap_note}}, indent=1))
        rows = analysis.as_rows(layers)
        with open(tmp / "layers.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        change_bars(layers, tmp / "changes.png", title)
        energy_plot(layers, tmp / "svd_energy.png", title)
        if swap_rows:
            swap_chart(swap_rows, tmp / "swap.png", f"swap ablation ({args.sampler}): {title}")
            side_by_side(samples["images"], samples["prompts"]).save(tmp / "swap_samples.png")
        (tmp / "report.md").write_text(report_text(args, summary, swap_rows, swap_note, len(prompts)))
    print(f"wrote {out}/: analysis.json, layers.csv, changes.png, svd_energy.png, report.md"
          + (", swap.png, swap_samples.png" if swap_rows else ""))
    return 0
