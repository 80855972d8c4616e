"""``wadi dreambooth``: teach the teacher (or the student) a subject with a LoRaD, LoRA or full adapter and
prior preservation; ``wadi dreambooth-eval``: measure subject fidelity, prompt adherence, class drift
and diversity on the embedded world's subject (an orange diamond, "a sks square").

Without ``--instance-dir`` the embedded subject's exemplars are rendered into OUT/instance.
"""

from __future__ import annotations

from wadi_core.choices import EMBEDDED_MODEL as MODEL_DIR
from wadi_core.progress import Progress
from wadi_core.shapes import novel

from . import argtypes as A
from .commands import summary
from .outputs import writes

def register(sub) -> None:
    p = sub.add_parser("dreambooth", help=summary("dreambooth"))
    p.add_argument("--out", required=True, help="output folder: subject.safetensors, loss.png, samples.png")
    p.add_argument("--instance-dir", help="3-8 images of the subject (default: render the embedded subject)")
    p.add_argument("--count", type=A.positive_int, default=6, help="exemplars to render for the embedded subject")
    p.add_argument("--instance-prompt", default=novel.INSTANCE_PROMPT,
                   help=f"the subject's caption: a rare word and the class noun (default '{novel.INSTANCE_PROMPT}')")
    p.add_argument("--class-prompt", default=novel.CLASS_PROMPT,
                   help=f"the plain class, for prior preservation (default '{novel.CLASS_PROMPT}')")
    p.add_argument("--class-dir", help="images of the class (default: generate --num-class-images)")
    p.add_argument("--num-class-images", type=A.positive_int, default=64)
    p.add_argument("--model", default=str(MODEL_DIR), help=f"the base model: {A.MODEL_PATHS}")
    A.backbone_option(p)
    p.add_argument("--student", help="the distilled student: it generates the class images in one step, and "
                                     "with --on student it is the network fine-tuned")
    p.add_argument("--on", choices=("teacher", "student"), default="teacher", help="which network to fine-tune")
    p.add_argument("--adapter-kind", choices=("lorad", "lora", "full"), default="lorad",
                   help="the subject adapter's kind")
    A.hidden_alias(p, "--adapter", "adapter_kind", choices=("lorad", "lora", "full"))
    p.add_argument("--rank", type=A.positive_int, default=8)
    p.add_argument("--preset", default="unet-student")
    p.add_argument("--steps", type=A.positive_int, default=300)
    p.add_argument("--batch-size", type=A.positive_int, default=4)
    p.add_argument("--lr", type=A.learning_rate, help="learning rate (default: lorad 5e-3, lora 1e-3, full 1e-4)")
    p.add_argument("--prior-weight", type=A.non_negative, default=1.0,
                   help="weight of the prior-preservation loss (0 = off)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    A.device_option(p, "where to generate the class images, train and draw the samples (float32)")
    p.set_defaults(run=run_train)

    e = sub.add_parser("dreambooth-eval", help=summary("dreambooth-eval"))
    e.add_argument("--adapter", help="subject.safetensors from wadi dreambooth (without it: the base model, the baseline)")
    e.add_argument("--student", help="evaluate in one step on this student (else the teacher, 25 DDIM steps)")
    e.add_argument("--model", default=str(MODEL_DIR))
    A.backbone_option(e)
    e.add_argument("--count", type=A.at_least_two, default=48, help="images per prompt group")
    e.add_argument("--seed", type=A.seed, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(run=run_eval)


@writes("out")
def run_train(args) -> int:
    from wadi_core import students
    from wadi_core.devices import resolve
    from wadi_core.tasks import dreambooth as D

    device = resolve(args.device)  # a device this machine lacks is refused before anything loads
    spec = students.AdapterSpec(args.adapter_kind, args.rank, args.preset)
    config = D.DreamBoothConfig(args.instance_prompt, args.class_prompt, spec, args.steps, args.batch_size, args.lr,
                                args.prior_weight, args.seed)
    run = D.train(args.model, args.out, config, args.instance_dir, args.count, args.class_dir, args.num_class_images,
                  args.student, args.on, args.overwrite, Progress(quiet=args.quiet), args.backbone, device)
    print(f"trained {run.label} ({run.trainable:,} values) in {run.minutes:.1f} min; wrote {run.adapter}")
    return 0


@writes("out")
def run_eval(args) -> int:
    from wadi_core.tasks import dreambooth as D

    D.evaluate(args.out, args.model, args.adapter, args.student, args.count, args.seed, args.overwrite, report=print,
               backbone=args.backbone)
    print(f"wrote {args.out}/metrics.json and grid.png")
    return 0
