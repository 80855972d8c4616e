"""Which colours and shapes a shapes-world generator gets wrong, and what it draws instead.

    python research/attribute_confusion.py --student runs/demo/student.safetensors   # one-step student
    python research/attribute_confusion.py                                            # the teacher, 25 steps
    python research/attribute_confusion.py --student S --grid squares.png --shape square   # look at them

On the single-object prompts of `wadi eval`'s held-out set (same prompts and seeds), prints per colour and per
shape how often the judge finds it, and for the misses the colour / shape of the largest object drawn instead;
then per shape how much of its bounding box the object of the prompt's colour fills (the judge calls 0.84 or
more a square). Results: docs/lab/results.md, "Session 11" and "Session 15".
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from wadi_core.evaluate import evaluate_student, evaluate_teacher  # noqa: E402
from wadi_core.images import labelled_grid  # noqa: E402
from wadi_core.shapes import parse_prompt, sample_prompts  # noqa: E402
from wadi_core.shapes.components import MODEL_DIR  # noqa: E402
from wadi_core.shapes.judge import judge  # noqa: E402


def judged(images, prompts) -> list[tuple]:
    """``(image, prompt text, parsed prompt, verdict)`` for the single-object prompts: each image judged once."""
    out = []
    for image, text in zip(images, prompts):
        prompt = parse_prompt(text)
        if not prompt.relation:
            out.append((image, text, prompt, judge(image, prompt)))
    return out


def confusion(verdicts) -> dict[str, dict[str, collections.Counter]]:
    """``{"color"|"shape": {wanted: Counter(drawn)}}`` over ``judged(...)``; drawn is the wanted value when the
    judge accepts it, else the largest object's value (``"nothing"`` when no object is found)."""
    out = {"color": collections.defaultdict(collections.Counter), "shape": collections.defaultdict(collections.Counter)}
    for _, _, prompt, verdict in verdicts:
        largest = max(verdict.objects, key=lambda o: o.area) if verdict.objects else None
        for index, attribute in enumerate(("color", "shape")):
            wanted = prompt.objects[0][index]
            drawn = wanted if verdict.checks[attribute] else getattr(largest, attribute, "nothing")
            out[attribute][wanted][drawn] += 1
    return out


def box_fill(verdict):
    """How much of its bounding box the largest object of the (single-object) prompt's colour fills in a judge's
    verdict (None if there is none)."""
    color = verdict.prompt.objects[0][0]
    found = next((o for o in verdict.objects if o.color == color), None)
    return float(found.mask.mean()) if found is not None else None


def fill_report(verdicts) -> str:
    fills = collections.defaultdict(list)
    for _, _, prompt, verdict in verdicts:
        if (fill := box_fill(verdict)) is not None:
            fills[prompt.objects[0][1]].append(fill)
    lines = ["box fill of the object of the prompt's colour (median, 10th-90th percentile; square >= 0.84):"]
    for shape, values in sorted(fills.items()):
        low, mid, high = np.percentile(values, [10, 50, 90])
        lines.append(f"  {shape:8s} {mid:.3f} ({low:.3f}-{high:.3f})")
    return "\n".join(lines)


def shape_grid(verdicts, shape: str):
    """The prompts of ``judged(...)`` asking for ``shape``, each labelled with the judge's verdict and its box fill
    (None when no prompt asks for it)."""
    picked, labels = [], []
    for image, text, prompt, verdict in verdicts:
        if prompt.objects[0][1] != shape:
            continue
        fill = box_fill(verdict)
        picked.append(image)
        labels.append(f"{text}: {'ok' if verdict.checks['shape'] else 'wrong'}"
                      + (f", fill {fill:.2f}" if fill is not None else ""))
    return labelled_grid(np.stack(picked), labels) if picked else None


def report(table: dict[str, dict[str, collections.Counter]]) -> str:
    lines = []
    for attribute, rows in table.items():
        lines.append(f"{attribute}:")
        for wanted, drawn in sorted(rows.items()):
            total = sum(drawn.values())
            misses = ", ".join(f"{k} {v}" for k, v in drawn.most_common() if k != wanted) or "-"
            lines.append(f"  {wanted:8s} {drawn[wanted]:3d}/{total:<3d} ({drawn[wanted] / total:6.1%})  drawn instead: "
                         f"{misses}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", help="a one-step student adapter (default: the teacher with 25 DDIM steps)")
    p.add_argument("--model", default=str(MODEL_DIR))
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--guidance", type=float, default=3.0, help="the teacher's CFG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", metavar="PNG", help="also write the images of the single-object prompts of --shape")
    p.add_argument("--shape", default="square", choices=("circle", "square", "triangle"))
    args = p.parse_args(argv)
    prompts = [q.caption() for q in sample_prompts(args.num_prompts, "heldout", seed=args.seed)]
    if args.student:
        _, images = evaluate_student(args.model, args.student, prompts, seed=args.seed)
    else:
        _, images = evaluate_teacher(args.model, prompts, seed=args.seed, guidance=args.guidance)
    verdicts = judged(images, prompts)
    print(report(confusion(verdicts)))
    print(fill_report(verdicts))
    if args.grid:
        grid = shape_grid(verdicts, args.shape)
        if grid is None:
            p.error(f"no single-object prompt among the {args.num_prompts} asks for a {args.shape}; no --grid "
                    "written: raise --num-prompts")
        grid.save(args.grid)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
