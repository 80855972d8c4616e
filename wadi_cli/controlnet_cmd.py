"""``wadi controlnet-train`` and ``wadi controlnet``: train a ControlNet for a teacher, and generate or evaluate
with it, one step from a student or multi-step from the teacher (:mod:`wadi_core.tasks.controlnet`).

On the embedded world the condition is the scenes' silhouette (shapes white on black), rendered on the fly;
elsewhere ``--data`` names a JSONL file of ``{"image", "condition", "caption"}``.
"""

from __future__ import annotations

from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR
from wadi_core.choices import SHAPES_CONTROLNET
from wadi_core.progress import Progress

from . import argtypes as A
from .commands import summary
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("controlnet-train", help=summary("controlnet-train"))
    p.add_argument("--out", required=True, help="output folder (controlnet/ when done, checkpoint/, loss.png)")
    p.add_argument("--model", default=str(MODEL_DIR), help="the teacher the ControlNet is for")
    A.hidden_alias(p, "--teacher", "model")
    A.backbone_option(p)
    p.add_argument("--data", help="JSONL with image, condition and caption per line (needed for a real teacher)")
    p.add_argument("--steps", type=A.positive_int, default=1500)
    p.add_argument("--batch-size", type=A.positive_int, default=32)
    p.add_argument("--lr", type=A.learning_rate, default=1e-4)
    p.add_argument("--caption-dropout", type=A.fraction, default=0.1)
    p.add_argument("--checkpoint-every", type=A.count, default=250,
                   help="steps between resumable checkpoints, 0 = none before the end")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_train)

    g = sub.add_parser("controlnet", help=summary("controlnet"))
    g.add_argument("--controlnet", default=str(SHAPES_CONTROLNET),
                   help="a diffusers ControlNet folder (OUT/controlnet of controlnet-train; default: the shipped "
                        "silhouette ControlNet of the embedded world)")
    g.add_argument("--model", default=str(MODEL_DIR))
    g.add_argument("--student", help="a student / LoRaD file: one-step generation (else --steps of DDIM)")
    A.backbone_option(g)
    g.add_argument("--one-step", action="store_true", help="sample --model in one step (a merged or released student)")
    g.add_argument("--steps", type=A.positive_int, default=25)
    g.add_argument("--guidance", type=A.guidance, default=3.0)
    g.add_argument("--scale", type=A.non_negative, default=1.0, help="ControlNet conditioning scale")
    g.add_argument("--prompt", help="prompt (with --control)")
    g.add_argument("--control", help="the control image (PNG) for --prompt")
    g.add_argument("--eval", type=A.count, default=0, metavar="N", help="evaluate on N held-out embedded scenes")
    g.add_argument("--seed", type=A.seed, default=0)
    g.add_argument("--out", required=True, help="output folder (PNGs, grid.png, metrics.json with --eval)")
    g.add_argument("--overwrite", action="store_true")
    A.device_option(g)
    A.dtype_option(g)
    g.set_defaults(run=run_generate)


def run_train(args) -> int:
    from wadi_core.tasks import controlnet as C

    folder = C.train(args.model, args.out, args.data, args.steps, args.batch_size, args.lr, args.caption_dropout,
                     args.checkpoint_every, args.seed, args.resume, Progress(quiet=args.quiet), args.backbone)
    print(f"wrote {folder} ({args.steps} steps); loss curve in {folder.parent / 'loss.png'}")
    return 0


@writes("out")
def run_generate(args) -> int:
    from wadi_core.devices import resolve
    from wadi_core.tasks import controlnet as C

    resolve(args.device)  # a device this machine lacks is refused before anything loads
    C.draw(args.controlnet, args.out, args.model, args.student, args.steps, args.guidance, args.scale, args.prompt,
           args.control, args.eval, args.seed, args.overwrite, report=print, backbone=args.backbone,
           one_step=args.one_step, device=args.device, dtype=args.dtype)
    print(f"wrote {args.out}")
    return 0
