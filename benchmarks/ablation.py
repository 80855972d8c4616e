"""The paper's Table 2 in miniature: the same WaDi distillation budget with the student trained
as LoRaD, LoRA, DoRA (PEFT) or full fine-tuning, several seeds each, on the embedded world.

    python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2

The budget and recipe default to the embedded world's (``wadi demo``'s): its steps, fake updates per step,
student EMA and low-noise last phase; only the student's kind, rank and learning rate change.

For every run: held-out prompt accuracy and domain FID of the one-step student, trainable
parameters, seconds per training step, and the mean row norm / direction change of the student's
weights against the teacher (wadi_core.analysis, as wadi analyze defines them). Writes ``results.json`` and ``table.md``
in --out; each run's folder keeps its student (``full/seed0/student.safetensors`` etc.).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from wadi_core.distill import DistillConfig, Distiller
from wadi_core.distill.recipes import SHAPES
from wadi_core import analysis, students
from wadi_core.evaluate import evaluate_student
from wadi_core.lorad.presets import select_targets
from wadi_core.shapes import sample_prompts
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR
from wadi_core.analysis.sources import open_source

# Ranks chosen so that LoRaD, LoRA and DoRA train about the same number of parameters
# (LoRaD needs r * (out + in/2) per layer, LoRA r * (out + in)).
DEFAULT_RANKS = {"lorad": 24, "lora": 18, "dora": 18, "full": 0}
SHOWN = ("single/color", "single/shape", "relation/relation")
# What makes two runs comparable besides kind and seed (rows of another recipe are left out of the table).
RECIPE = ("steps", "fake_updates", "ema", "late_fraction")


def weight_changes(adapter: Path) -> dict[str, float]:
    """Mean row norm and direction change (``wadi analyze``'s definitions) over the layers the students train."""
    trained = {name for name, _ in select_targets(load_components(MODEL_DIR).unet, preset="unet-student")}
    base = open_source(MODEL_DIR)
    layers = [layer for layer in analysis.analyse(base, open_source(adapter, base), progress=False)
              if layer.name in trained]
    return {"norm_change": statistics.mean(layer.norm_mean for layer in layers),
            "direction_change": statistics.mean(layer.direction_mean for layer in layers)}


def run_one(kind: str, seed: int, args) -> dict:
    folder = Path(args.out) / kind / f"seed{seed}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    # each kind trains at its own default learning rate (the shapes recipe, wadi_core/distill/recipes.py)
    config = DistillConfig.from_options(out=str(folder), student_kind=kind, student_rank=args.ranks[kind],
                                        steps=args.steps, fake_updates=args.fake_updates, ema=args.ema,
                                        late_fraction=args.late_fraction, batch_size=args.batch_size, seed=seed,
                                        report_to="none", checkpoint_every=args.steps, sample_every=args.steps,
                                        overwrite=True)
    distiller = Distiller(config, progress=not args.quiet)
    trainable = sum(p.numel() for p in distiller.student_params)
    adapter = distiller.run()
    prompts = [p.caption() for p in sample_prompts(args.num_prompts, "heldout", seed=1000)]
    metrics, _ = evaluate_student(MODEL_DIR, adapter, prompts, seed=1000)
    step_seconds = statistics.median(r["seconds"] for r in distiller.history)
    return {"kind": kind, "seed": seed, **recipe_of(args), "rank": args.ranks[kind], "lr": distiller.config.student.lr,
            "trainable": trainable, "step_seconds": step_seconds, "fid": metrics["fid"],
            "accuracy": metrics["prompt_accuracy"], **weight_changes(adapter)}


def recipe_of(args) -> dict:
    return {key: getattr(args, key) for key in RECIPE}


def same_recipe(row: dict, args) -> bool:
    written_before_the_recipe_was = {"fake_updates": 1, "ema": 0.0, "late_fraction": 0.0}  # those rows ran so
    return all({**written_before_the_recipe_was, **row}[key] == value for key, value in recipe_of(args).items())


def summarise(rows: list[dict]) -> str:
    def mean_std(values, fmt):
        """The mean, with the standard deviation where there is more than one seed."""
        values = list(values)
        text = format(statistics.mean(values), fmt)
        return text + (f" ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else "")

    lines = ["| student | seeds | trainable | s/step | FID | " + " | ".join(SHOWN)
             + " | norm change | direction change |",
             "|---|---|---|---|---|" + "---|" * len(SHOWN) + "---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        group = [r for r in rows if r["kind"] == kind]
        fid = mean_std((r["fid"] for r in group), ".0f")
        acc = [mean_std((r["accuracy"][k] for r in group), ".1%") for k in SHOWN]
        label = ("full fine-tuning" if kind == "full" else f"{kind} r{group[0]['rank']}") + f", lr {group[0]['lr']:g}"
        step_seconds = statistics.mean(r["step_seconds"] for r in group)
        lines.append(f"| {label} | {len(group)} | {group[0]['trainable']:,} | {step_seconds:.2f} | "
                     f"{fid} | " + " | ".join(acc)
                     + f" | {statistics.mean(r['norm_change'] for r in group):.2e}"
                     f" | {statistics.mean(r['direction_change'] for r in group):.2e} |")
    lines += ["", "Mean ± standard deviation over the seeds. "
              f"Norm change: {analysis.DEFINITIONS['norm_change']}; direction change: the "
              f"{analysis.DEFINITIONS['direction_change'].split(';')[0]}; both mean over rows and over the "
              "unet-student layers. s/step: the median seconds per training step of the runs."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", nargs="+", default=list(DEFAULT_RANKS), choices=students.KINDS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=SHAPES.steps)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--fake-updates", type=int, default=SHAPES.fake_updates,
                   help="fake-model steps per student step (the paper: 1)")
    p.add_argument("--ema", type=float, default=SHAPES.ema, help="EMA decay of the student (0 = off)")
    p.add_argument("--late-fraction", type=float, default=SHAPES.late_fraction,
                   help="the last fraction of the steps at low noise only (wadi distill --late-fraction; 0 = off)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--recompute-changes", action="store_true",
                   help="recompute the weight changes of finished runs from their student files")
    args = p.parse_args(argv)
    args.ranks = DEFAULT_RANKS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    rows = json.loads(results.read_text()) if results.exists() else []  # finished runs are kept
    rows = [r for r in rows if same_recipe(r, args)]  # runs of another budget or recipe are not comparable
    if args.recompute_changes:
        for row in rows:
            row.update(weight_changes(out / row["kind"] / f"seed{row['seed']}" / "student.safetensors"))
        results.write_text(json.dumps(rows, indent=1))
    done = {(r["kind"], r["seed"]) for r in rows}
    for kind in args.kinds:
        for seed in args.seeds:
            if (kind, seed) in done:
                continue
            rows.append(run_one(kind, seed, args))
            results.write_text(json.dumps(rows, indent=1))
            print(summarise(rows))
    (out / "table.md").write_text(summarise(rows) + "\n")
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
