"""Above the training resolution on the embedded world: the student's one step on a 2x latent, the
two-stage route (one step, upscale, short teacher refinement), and the teacher, side by side.

    python benchmarks/highres.py --student runs/demo2/distill/student.safetensors --out runs/highres

Prints and writes (``results.json``, ``table.md``, ``grid.png``) prompt accuracy (the judge reads
any resolution), domain FID against renders (the feature net resizes to 32x32) and time per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wadi_core import students
from wadi_core.sampling import highres, onestep
from wadi_core.evaluate import evaluate_images
from wadi_core.images import side_by_side
from wadi_core.sampling import sample
from wadi_core.shapes import sample_prompts
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR

SHOWN = ("single/color", "single/shape", "single/size", "relation/color", "relation/shape")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--strength", type=float, default=0.3)
    p.add_argument("--refine-steps", type=int, default=15)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [q.caption() for q in sample_prompts(args.num_prompts, "heldout", seed=0)]
    seeds = list(range(len(prompts)))
    teacher = load_components(MODEL_DIR)
    student = load_components(MODEL_DIR)
    students.apply_adapter_file(student.unet, args.student)
    onestep.generate(student, prompts[:4], seeds[:4], progress=False)  # warm-up
    s = args.scale
    refine = round(args.refine_steps * args.strength)
    routes = {
        "teacher 25 steps, 1x": lambda: sample(teacher, prompts, seeds, progress=False),
        "student 1 step, 1x": lambda: onestep.generate(student, prompts, seeds, progress=False),
        f"student 1 step, {s}x": lambda: onestep.generate(student, prompts, seeds, progress=False, scale=s),
        f"two-stage: student 1x, upscale, teacher {refine} steps, {s}x":
            lambda: highres.two_stage(student, teacher, prompts, seeds, s, args.strength, args.refine_steps),
        f"teacher 25 steps, {s}x": lambda: sample(teacher, prompts, seeds, progress=False, scale=s),
    }
    rows, grids = [], {}
    for name, route in routes.items():
        start = time.perf_counter()
        images = route()
        seconds = time.perf_counter() - start
        metrics = evaluate_images(images, prompts, seed=0)
        rows.append({"route": name, "size": images.shape[1], "fid": metrics["fid"],
                     "accuracy": metrics["prompt_accuracy"], "ms_per_image": 1000 * seconds / len(prompts)})
        grids[name.split(":")[0]] = images[:12]
        print(f"{name}: FID {metrics['fid']:.0f}, " + ", ".join(
            f"{k} {metrics['prompt_accuracy'].get(k, 0):.1%}" for k in SHOWN) + f", {rows[-1]['ms_per_image']:.1f} ms")
    lines = ["| route | pixels | FID | " + " | ".join(SHOWN) + " | ms per image |",
             "|---|---|---|" + "---|" * len(SHOWN) + "---|"]
    for r in rows:
        lines.append(f"| {r['route']} | {r['size']} | {r['fid']:.0f} | "
                     + " | ".join(f"{r['accuracy'].get(k, 0):.1%}" for k in SHOWN) + f" | {r['ms_per_image']:.1f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    side_by_side(grids, prompts[:12]).save(out / "grid.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
