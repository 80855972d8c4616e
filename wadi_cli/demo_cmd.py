"""``wadi demo``: the whole story on the embedded world in one command (:func:`wadi_core.demo.run_demo`)."""

from __future__ import annotations

from wadi_core.choices import ADAPTER_KINDS

from . import argtypes as A
from .commands import summary
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("demo", help=summary("demo"))
    p.add_argument("--out", default="wadi-demo", help="output folder (default: wadi-demo)")
    p.add_argument("--steps", type=A.positive_int, default=None,
                   help="distillation steps (default: the embedded default)")
    p.add_argument("--num-prompts", type=A.positive_int, default=256, help="held-out prompts to evaluate on")
    p.add_argument("--student-kind", default="lorad", choices=ADAPTER_KINDS,
                   help="the student's adapter kind, each at its own default learning rate (see wadi distill --help)")
    A.hidden_alias(p, "--student", "student_kind", choices=ADAPTER_KINDS)
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--regression-pairs", type=A.count, default=0, metavar="N",
                   help="add DMD's regression loss on N teacher samples (see wadi distill --help)")
    p.add_argument("--processes", type=A.positive_int, default=1,
                   help="distil in N processes of one thread each, each with its share of the batch (default 1; "
                        "see docs/multi_gpu.md)")
    A.device_option(p, "where to draw the evaluation's images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


@writes("out")
def run(args) -> int:
    from wadi_core.demo import run_demo
    from wadi_core.devices import resolve

    device = resolve(args.device)  # refused now, not after the distillation
    metrics = run_demo(args.out, args.steps, args.num_prompts, args.student_kind, args.seed, args.regression_pairs,
                       args.overwrite, progress=not args.quiet, processes=args.processes, device=device)
    t, s = metrics["teacher"]["prompt_accuracy"], metrics["student"]["prompt_accuracy"]
    print(f"teacher: colour {t['single/color']:.1%} shape {t['single/shape']:.1%} FID {metrics['teacher']['fid']:.1f}"
          f" | student (1 step): colour {s['single/color']:.1%} shape {s['single/shape']:.1%} "
          f"FID {metrics['student']['fid']:.1f} | {metrics['speedup']:.1f}x faster")
    print(f"wrote {args.out}/report.md, metrics.json, grid.png and loss.png ({metrics['total_minutes']:.1f} min)")
    return 0
