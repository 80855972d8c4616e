"""DreamBooth on the embedded subject with LoRaD, LoRA and full fine-tuning at equal steps, several seeds:
subject fidelity, prompt adherence, class drift and diversity, as mean +- std.

    python benchmarks/dreambooth_compare.py --student runs/demo2/distill/student.safetensors \\
        --out runs/dreambooth-compare --seeds 0 1 2

Each run is ``wadi dreambooth`` (class images by the one-step student) then ``wadi dreambooth-eval`` (the
teacher with the adapter, 25 DDIM steps); finished runs in OUT are reused, so an interrupted comparison
continues. Prints a Markdown table and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wadi_cli.cli import main as wadi  # noqa: E402
from wadi_core import students  # noqa: E402

COLUMNS = [("subject", "diamond", "fidelity: 'an orange sks square' is a diamond"),
           ("subject", "color", "orange"),
           ("recoloured", "diamond", "recoloured: still a diamond"),
           ("recoloured", "color", "recoloured: colour honoured"),
           ("placed", "position", "position honoured"),
           ("class", "diamond", "class drift: 'a <colour> square' drawn as a diamond"),
           ("subject", "diversity", "diversity")]


def run_one(out: Path, kind: str, seed: int, args) -> dict:
    run, evaluation = out / f"{kind}-s{seed}", out / f"{kind}-s{seed}-eval"
    if not (run / "subject.safetensors").is_file():
        argv = ["dreambooth", "--out", str(run), "--adapter-kind", kind, "--steps", str(args.steps),
                "--seed", str(seed), "--quiet", "--overwrite"] + (["--student", args.student] if args.student else [])
        if wadi(argv) != 0:
            raise SystemExit(f"wadi dreambooth failed for {kind}, seed {seed}")
    if not (evaluation / "metrics.json").is_file():
        if wadi(["dreambooth-eval", "--adapter", str(run / "subject.safetensors"), "--out", str(evaluation),
                 "--count", str(args.count), "--overwrite"]) != 0:
            raise SystemExit(f"wadi dreambooth-eval failed for {kind}, seed {seed}")
    results = json.loads((evaluation / "metrics.json").read_text())["results"]
    spec = students.read_spec(run / "subject.safetensors")
    from safetensors.torch import load_file
    values = sum(t.numel() for t in load_file(str(run / "subject.safetensors")).values())
    return {"kind": spec.kind, "values": values, **{f"{g}/{k}": results[g][k] for g, k, _ in COLUMNS}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/dreambooth-compare")
    p.add_argument("--student", help="generates the class images in one step (else the teacher does)")
    p.add_argument("--kinds", nargs="+", default=["lorad", "lora", "full"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--count", type=int, default=48)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # each run's folder goes inside it
    rows = {kind: [run_one(out, kind, seed, args) for seed in args.seeds] for kind in args.kinds}
    summary = {}
    print("| adapter | trained values | " + " | ".join(label for _, _, label in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for kind, runs in rows.items():
        cells = []
        summary[kind] = {"values": runs[0]["values"], "seeds": args.seeds}
        for group, key, _ in COLUMNS:
            values = np.array([r[f"{group}/{key}"] for r in runs])
            summary[kind][f"{group}/{key}"] = {"mean": float(values.mean()), "std": float(values.std()),
                                               "runs": values.tolist()}
            scale, unit = (1, "") if key == "diversity" else (100, "%")
            cells.append(f"{values.mean() * scale:.1f}{unit} ± {values.std() * scale:.1f}")
        print(f"| {kind} | {runs[0]['values']:,} | " + " | ".join(cells) + " |")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
