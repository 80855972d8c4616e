"""``wadi reversion``: learn a relation token from exemplar images against the teacher (ReVersion), and
``wadi reversion-eval``: measure it on the embedded world with the teacher (25 steps) and the one-step
student, against the plain initialiser word.

Without ``--exemplars`` an embedded world relation that no caption names is rendered into
OUT/exemplars: ``--relation inside`` (a small shape inside a large one) or ``larger`` (the first
shape larger than the second).
"""

from __future__ import annotations

from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR
from wadi_core.progress import Progress
from wadi_core.shapes import novel

from . import argtypes as A
from .commands import summary
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("reversion", help=summary("reversion"))
    p.add_argument("--out", required=True, help="output folder: reversion.safetensors, embeddings/NAME.safetensors, "
                                                "loss.png, samples.png")
    p.add_argument("--exemplars", help="folder of images + text.json (image name -> captions with the token); "
                                       "default: render the embedded world's 'inside' relation")
    p.add_argument("--relation", default="larger", choices=list(novel.NOVEL_RELATIONS),
                   help="the embedded relation to render exemplars of (without --exemplars)")
    p.add_argument("--count", type=A.positive_int, default=12, help="exemplars to render for the embedded relation")
    p.add_argument("--model", default=str(MODEL_DIR), help=f"the teacher, the multi-step model: {A.MODEL_PATHS}")
    A.hidden_alias(p, "--teacher", "model")
    A.backbone_option(p)
    p.add_argument("--token", default="<R>", help="the new relation token (must not be in the vocabulary)")
    p.add_argument("--init", help="initialiser word(s) of the token's embedding (default: the embedded relation's, "
                                  "'in' for inside, 'and' for larger; 'and' with --exemplars)")
    p.add_argument("--name", default="wadi_relation", help="name of the textual-inversion file (embedding:NAME)")
    # left out: ReVersionConfig's defaults (wadi_core/tasks/reversion.py), read only when the command runs
    p.add_argument("--steps", type=A.positive_int, help="training steps (default 400)")
    p.add_argument("--batch-size", type=A.positive_int, help="exemplars per step (default 8)")
    p.add_argument("--lr", type=A.learning_rate, help="the token embedding's learning rate (default 5e-3)")
    p.add_argument("--steer-weight", type=A.non_negative,
                   help="weight of the relation-steering loss (default 0.01; 0 = plain textual inversion)")
    p.add_argument("--importance-alpha", type=A.non_negative,
                   help="relation-focal timestep sampling strength (default 0.5; 0 = uniform)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    A.device_option(p, "where to train the token and draw the samples (float32)")
    p.set_defaults(run=run_train)

    e = sub.add_parser("reversion-eval", help=summary("reversion-eval"))
    e.add_argument("--embedding", required=True, help="reversion.safetensors from wadi reversion")
    e.add_argument("--student", help="a distilled student adapter for the one-step rows")
    e.add_argument("--model", default=str(MODEL_DIR))
    A.backbone_option(e)
    e.add_argument("--count", type=A.positive_int, default=64, help="prompts (new entity pairs)")
    e.add_argument("--steps", type=A.positive_int, default=25)
    e.add_argument("--guidance", type=A.guidance, default=3.0)
    e.add_argument("--baseline", help="the baseline word (default: the token's initialiser)")
    e.add_argument("--seed", type=A.seed, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(run=run_eval)


@writes("out")
def run_train(args) -> int:
    from wadi_core.devices import resolve
    from wadi_core.tasks import reversion as R

    device = resolve(args.device)  # a device this machine lacks is refused before anything loads
    init = args.init or (novel.novel_relation(args.relation).init if not args.exemplars else "and")
    given = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, steer_weight=args.steer_weight,
                 importance_alpha=args.importance_alpha)
    config = R.ReVersionConfig(token=args.token, init=init, seed=args.seed,
                               **{name: value for name, value in given.items() if value is not None})
    run = R.train(args.model, args.out, config, args.exemplars, args.relation, args.count, args.name,
                  args.overwrite, Progress(quiet=args.quiet), args.backbone, device)
    print(f"learned {args.token} in {run.minutes:.1f} min; wrote {run.embedding} and {run.textual_inversion} "
          f"(ComfyUI: embedding:{args.name}; A1111: {args.name})")
    return 0


@writes("out")
def run_eval(args) -> int:
    from wadi_core.tasks import reversion as R

    R.evaluate(args.embedding, args.out, args.model, args.student, args.count, args.steps, args.guidance,
               args.baseline, args.seed, args.overwrite, report=print, backbone=args.backbone)
    print(f"wrote {args.out}/metrics.json and grid.png")
    return 0
