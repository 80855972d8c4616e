"""How one-step students change with the distillation budget on the embedded world: their prompt accuracy and FID
against the step (``curves``), and the teacher beside chosen students (``grid``).

    wadi distill --steps 8000 --student-every 500 --out runs/budget/lorad-8000
    wadi eval --student runs/budget/lorad-8000/students/student-step003000.safetensors --num-prompts 256 \\
        --seed 1000 --out runs/budget/lorad-8000-at3000.json        # and so on for each kept student
    python benchmarks/budget.py curves docs/budget_results.json docs/budget_curves.png
    python benchmarks/budget.py grid docs/budget_grid.png "LoRaD 800=runs/budget/lorad-800/student.safetensors" ...

``curves`` reads rows of ``{"run", "kind", "steps", "fid", "accuracy"}`` (accuracy as ``wadi eval`` writes it);
rows named ``"<run>, checkpoint <step>"`` join the line of ``<run>``, a row of kind ``teacher`` is drawn as a
level. ``grid`` draws the first held-out prompts of ``wadi eval --seed 1000`` with the same image seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PANELS = (("single/shape", "shape accuracy"), ("single/color", "colour accuracy"),
          ("single/position", "position accuracy"), ("fid", "FID (lower is better)"))
COLOURS = {"lorad": "tab:blue", "full": "tab:orange"}


def value(row: dict, key: str) -> float:
    return row["fid"] if key == "fid" else 100 * row["accuracy"][key]


def curves(rows: list[dict], out: Path) -> None:
    """One panel per measure: a line per run with kept students, a point per other run, the teacher's level."""
    from wadi_core.plots import _pyplot, save_figure

    runs, seen = defaultdict(list), set()
    for row in rows:
        same = (row["kind"], row["steps"], row["fid"])  # one run listed twice (made by two commands) is drawn once
        if row["kind"] != "teacher" and same not in seen:
            seen.add(same)
            runs[row["run"].split(", checkpoint")[0]].append(row)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for row in rows:
            if row["kind"] == "teacher":
                ax.axhline(value(row, key), color="black", linestyle="--", linewidth=1, label="teacher, 25 steps")
        for i, (name, members) in enumerate(runs.items()):
            members = sorted(members, key=lambda r: r["steps"])
            steps, values = [r["steps"] for r in members], [value(r, key) for r in members]
            colour = COLOURS.get(members[0]["kind"], "gray")
            if len(members) > 1:
                ax.plot(steps, values, marker="o", markersize=3, color=colour, label=name)
            else:
                ax.scatter(steps, values, marker="sD^v<>p"[i % 7], s=34, color=colour, edgecolors="black",
                           linewidths=0.5, label=name, zorder=3)
        ax.set_title(title)
        ax.set_xlabel("distillation steps")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    save_figure(fig, out, "one-step students of the embedded world against the distillation budget",
                rect=(0, 0, 0.8, 1))  # the legend to the right of the panels


def grid(columns: dict[str, str], out: Path, count: int) -> None:
    """The teacher's 25 steps beside each student's one step on the first ``count`` prompts of ``wadi eval``."""
    from wadi_core.images import side_by_side
    from wadi_core.sampling import build_generator
    from wadi_core.shapes import sample_prompts

    prompts = [p.caption() for p in sample_prompts(count, "heldout", seed=1000)]
    seeds = [1000 + i for i in range(count)]
    images = {"teacher, 25 steps": build_generator()(prompts, seeds)}
    for label, student in columns.items():
        images[label] = build_generator(adapters=[(student, 1.0)])(prompts, seeds)
    side_by_side(images, prompts).save(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="accuracy and FID against the step, as PNG")
    c.add_argument("results", help="JSON list of rows (docs/budget_results.json)")
    c.add_argument("out", help="PNG to write")
    g = sub.add_parser("grid", help="the teacher beside students, as PNG")
    g.add_argument("out", help="PNG to write")
    g.add_argument("columns", nargs="+", metavar="LABEL=STUDENT", help="a column: its label and a student file")
    g.add_argument("--count", type=int, default=8, help="prompts (rows)")
    args = p.parse_args(argv)
    if args.command == "curves":
        curves(json.loads(Path(args.results).read_text()), Path(args.out))
    else:
        bad = [column for column in args.columns if "=" not in column]
        if bad:
            p.error(f"a column is LABEL=STUDENT, not {bad[0]!r}")
        grid(dict(column.split("=", 1) for column in args.columns), Path(args.out), args.count)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
