"""``analyze(base, other, out)``: how two checkpoints differ in weight norm and weight direction, written as files.

``out`` gets ``analysis.json`` (every number, with the definitions), ``layers.csv`` (one row per layer),
``changes.png`` (norm vs direction change per layer), ``svd_energy.png`` (is the change of direction low-rank?),
``report.md``, and for the swap ablation ``swap.png`` and ``swap_samples.png`` (OTHER with BASE's norms, OTHER
with BASE's directions, sampled and scored).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import fileio
from ..evaluate import Metrics, summary_line
from ..images import side_by_side
from ..models import load_components
from ..prompts import read_prompts
from ..sampling import MultiStep, OneStep
from . import weights
from .plots import change_bars, energy_plot, swap_chart
from .sources import WeightSource, open_source


@dataclass(frozen=True)
class Swap:
    """The swap ablation: OTHER sampled with BASE's norms, then with BASE's directions, beside both models."""

    enabled: bool = True
    pipeline: str | None = None  # a diffusers SD folder to sample with (default: BASE, when it is one)
    sampler: str = "one-step"  # one-step, or a multi-step scheduler name (ddim, euler)
    steps: int = 25
    guidance: float = 3.0
    prompts: str | None = None  # a prompt file (default: held-out prompts of the shapes world)
    num_prompts: int = 128
    batch_size: int = 32
    seed: int = 0
    metrics: Metrics = field(default_factory=Metrics)

    def make_sampler(self):
        if self.sampler == "one-step":
            return OneStep(batch_size=self.batch_size)
        return MultiStep(self.steps, self.guidance, self.sampler, self.batch_size)


def swap_plan(swap: Swap, base: WeightSource) -> tuple[Path | None, str]:
    """The pipeline folder to sample the swap models with, or ``None`` and the reason it is skipped."""
    if not swap.enabled:
        return None, "skipped (--no-swap)"
    if base.checkpoint.backbone != "unet":
        return None, ("skipped: wadi samples SD-style UNet pipelines only so far; the weight analysis of this DiT "
                      "is complete")
    if swap.pipeline:
        return Path(swap.pipeline), ""
    if base.checkpoint.kind == "diffusers-pipeline":
        return base.checkpoint.path, ""
    return None, ("skipped: BASE is not a diffusers pipeline folder, so there is no text encoder or VAE to sample "
                  "with; pass --pipeline DIR (a diffusers SD folder of the same model)")


def swap_prompts(swap: Swap, base: WeightSource) -> list[str]:
    from ..shapes import sample_prompts

    if swap.prompts:
        prompts = read_prompts(swap.prompts)
    elif base.checkpoint.family != "shapes":
        raise ValueError("the swap ablation needs prompts for this model: pass --prompts FILE "
                         "(or --no-swap to analyse the weights only)")
    else:
        prompts = [p.caption() for p in sample_prompts(swap.num_prompts, "heldout", seed=swap.seed)]
    if len(prompts) < 4:
        raise ValueError(f"the swap ablation scores its samples with FID and k-NN precision/recall, which need at "
                         f"least 4 prompts; got {len(prompts)}")
    return prompts


def run_swap(swap: Swap, base: WeightSource, other: WeightSource, pipeline: Path, layers: list[str],
             prompts: list[str], progress: bool, report: Callable[[str], None]) -> tuple[list, dict]:
    """Sample and score OTHER, the two swap models and BASE with one sampler and the same seeds."""
    seeds = [swap.seed + i for i in range(len(prompts))]
    components = load_components(pipeline)
    inputs = swap.metrics.inputs(components)
    sampler = swap.make_sampler()
    models = [("OTHER", "OTHER", None, other), ("BASE norms + OTHER directions", "BASE norms", "base-norms", other),
              ("OTHER norms + BASE directions", "BASE dirs", "base-directions", other), ("BASE", "BASE", None, base)]
    rows, images = [], {}
    for label, column, swapped, source in models:
        components.unet.load_state_dict(weights.model_state(base, source, swapped, layers, progress=progress))
        generated = sampler(components, prompts, seeds, progress)
        result = swap.metrics.measure(generated, prompts, swap.seed, inputs)
        rows.append(dict(result, label=label, swap=swapped, description=weights.SWAPS.get(swapped, label)))
        images[column] = generated[:8]
        report(summary_line(label, result))
    return rows, {"prompts": prompts[:8], "images": images}


def report_text(base_name: str, other_name: str, sampler: str, summary: dict, swap_rows: list, swap_note: str,
                num_prompts: int) -> str:
    lines = [f"# Weight analysis: {other_name} against {base_name}", "",
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
        lines += ["", f"Sampler: {sampler}; {num_prompts}"
                      " prompts. If swapping in BASE's directions hurts far more than swapping in its norms, the "
                      "quality of OTHER lives in the directions of its weights."]
    else:
        lines.append(swap_note)
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in weights.DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


def analyze(base: str | os.PathLike, other: str | os.PathLike, out: str | os.PathLike, convs: bool = False,
            swap: Swap = Swap(), overwrite: bool = False, progress: bool = True,
            report: Callable[[str], None] = lambda text: None, backbone: str | os.PathLike | None = None) -> Path:
    """Analyse how ``other`` (a model, an adapter / student file for ``base``, or a released backbone state dict)
    changed ``base``'s weights (``backbone`` replaces base's own), run the swap ablation, and write the files
    listed above into ``out``; ``report`` gets the summary lines."""
    with fileio.claim(out, overwrite) as out:
        base_source = open_source(base, backbone=backbone)
        other_source = open_source(other, base_source)
        pipeline, swap_note = swap_plan(swap, base_source)
        prompts = swap_prompts(swap, base_source) if pipeline is not None else []  # a bad file fails before work
        layers = weights.analyse(base_source, other_source, convs, progress=progress)
        summary = weights.summary(layers)
        report(f"{summary['layers']} layers: norm change {summary['norm_change_mean']:.3e}, direction change "
               f"{summary['direction_change_mean']:.3e} rad, ratio {summary['direction_over_norm']:.2f}")
        swap_rows, samples = [], None
        if pipeline is not None:
            weight_names = [f"{layer.name}.weight" for layer in layers]
            swap_rows, samples = run_swap(swap, base_source, other_source, pipeline, weight_names, prompts, progress,
                                          report)
        else:
            report(f"swap ablation {swap_note}")
        title = f"{Path(other).name} vs {Path(base).name}"
        with fileio.atomic_dir(out, overwrite) as tmp:
            (tmp / "analysis.json").write_text(json.dumps({
                "base": base_source.label, "other": other_source.label, "convs": convs,
                "definitions": weights.DEFINITIONS, "rank_fractions": weights.RANK_FRACTIONS, "summary": summary,
                "layers": [vars(layer) for layer in layers],
                "swap": {"sampler": swap.sampler, "rows": swap_rows, "note": swap_note}}, indent=1))
            rows = weights.as_rows(layers)
            with open(tmp / "layers.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            change_bars(layers, tmp / "changes.png", title)
            energy_plot(layers, tmp / "svd_energy.png", title)
            if swap_rows:
                swap_chart(swap_rows, tmp / "swap.png", f"swap ablation ({swap.sampler}): {title}")
                side_by_side(samples["images"], samples["prompts"]).save(tmp / "swap_samples.png")
            (tmp / "report.md").write_text(report_text(str(base), str(other), swap.sampler, summary, swap_rows,
                                                       swap_note, len(prompts)))
    return out
