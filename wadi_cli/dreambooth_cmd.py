"""``wadi dreambooth``: teach the teacher (or the student) a subject with a LoRaD, LoRA or full adapter and
prior preservation; ``wadi dreambooth-eval``: measure subject fidelity, prompt adherence, class drift
and diversity on the embedded world's subject (an orange diamond, "a sks square").

Without ``--instance-dir`` the embedded subject's exemplars are rendered into OUT/instance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from wadi_core import dreambooth as D
from wadi_core import fileio, metrics, students
from wadi_core.sampling import onestep
from wadi_core.images import labelled_grid, read_image_folder
from wadi_core.plots import loss_curves
from wadi_core.sampling import image_size, sample
from wadi_core.shapes import novel
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR
from wadi_core.shapes.features import load_feature_net
from wadi_core.shapes.world import COLORS, POSITIONS, position_phrase

from .reporting import note, step_progress
from . import argtypes as A
from .outputs import writes

ADAPTER_FILE = "subject.safetensors"


def register(sub) -> None:
    p = sub.add_parser("dreambooth", help="teach a model a subject from a few images (DreamBooth with LoRaD, LoRA "
                                          "or full fine-tuning, prior preservation)")
    p.add_argument("--out", required=True, help=f"output folder: {ADAPTER_FILE}, loss.png, samples.png")
    p.add_argument("--instance-dir", help="3-8 images of the subject (default: render the embedded subject)")
    p.add_argument("--count", type=A.positive_int, default=6, help="exemplars to render for the embedded subject")
    p.add_argument("--instance-prompt", default=novel.INSTANCE_PROMPT,
                   help=f"the subject's caption: a rare word and the class noun (default '{novel.INSTANCE_PROMPT}')")
    p.add_argument("--class-prompt", default=novel.CLASS_PROMPT,
                   help=f"the plain class, for prior preservation (default '{novel.CLASS_PROMPT}')")
    p.add_argument("--class-dir", help="images of the class (default: generate --num-class-images)")
    p.add_argument("--num-class-images", type=A.positive_int, default=64)
    p.add_argument("--model", default=str(MODEL_DIR), help="the base model (diffusers SD folder)")
    p.add_argument("--student", help="the distilled student: it generates the class images in one step, and "
                                     "with --on student it is the network fine-tuned")
    p.add_argument("--on", choices=("teacher", "student"), default="teacher", help="which network to fine-tune")
    p.add_argument("--adapter", choices=("lorad", "lora", "full"), default="lorad")
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
    p.set_defaults(run=run_train)

    e = sub.add_parser("dreambooth-eval", help="measure a subject adapter of the embedded world: fidelity (diamond), "
                                               "colour/position adherence, class drift, diversity")
    e.add_argument("--adapter", help=f"{ADAPTER_FILE} from wadi dreambooth (without it: the base model, the baseline)")
    e.add_argument("--student", help="evaluate in one step on this student (else the teacher, 25 DDIM steps)")
    e.add_argument("--model", default=str(MODEL_DIR))
    e.add_argument("--count", type=A.at_least_two, default=48, help="images per prompt group")
    e.add_argument("--seed", type=A.seed, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(run=run_eval)


def class_images(args, components, folder: Path) -> np.ndarray | None:
    """The class folder's images, or ``--num-class-images`` generated (one step with --student) and saved."""
    if args.prior_weight <= 0:
        return None
    if args.class_dir:
        return read_image_folder(args.class_dir, image_size(components))[1]
    note(args, f"generating {args.num_class_images} class images ('{args.class_prompt}')")
    seeds = list(range(10_000, 10_000 + args.num_class_images))
    prompts = [args.class_prompt] * args.num_class_images
    if args.student:
        generator = load_components(args.model)
        students.apply_adapter_file(generator.unet, args.student)
        images = onestep.generate(generator, prompts, seeds, progress=not args.quiet)
    else:
        images = sample(components, prompts, seeds, progress=not args.quiet)
    folder.mkdir(parents=True)
    from PIL import Image
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return images


@writes("out")
def run_train(args) -> int:
    out = fileio.check_output(args.out, args.overwrite)
    if args.on == "student" and not args.student:
        raise ValueError("--on student needs --student (the distilled student adapter)")
    spec = students.AdapterSpec(args.adapter, args.rank, args.preset)
    config = D.DreamBoothConfig(args.instance_prompt, args.class_prompt, spec, args.steps, args.batch_size, args.lr,
                                args.prior_weight, args.seed)
    D.check_prompts(config)
    components = load_components(args.model)
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        if args.instance_dir:
            instance = read_image_folder(args.instance_dir, image_size(components))[1]
        else:
            if Path(args.model).expanduser().resolve() != MODEL_DIR.resolve():
                raise ValueError("a real model needs --instance-dir (a folder of 3-8 subject images)")
            folder = novel.write_subject_exemplars(tmp / "instance", args.count, args.seed)
            instance = read_image_folder(folder, image_size(components))[1]
        classes = class_images(args, components, tmp / "class_images")
        D.prepare_unet(components, args.student if args.on == "student" else None)
        note(args, "training")
        start = time.perf_counter()
        with step_progress(args, args.steps, f"DreamBooth ({spec.label()})", ("instance", "prior")) as progress:
            history = D.train_subject(components, instance, classes, config, progress)
        minutes = (time.perf_counter() - start) / 60
        extra = {"wadi.dreambooth.instance_prompt": args.instance_prompt, "wadi.dreambooth.on": args.on,
                 "wadi.dreambooth.student": str(args.student or "")}
        students.save_adapter_file(components.unet, spec, tmp / ADAPTER_FILE, extra=extra)
        (tmp / "history.json").write_text(json.dumps(history))
        loss_curves({"instance": [h["instance"] for h in history], "prior": [h["prior"] for h in history]},
                    tmp / "loss.png", title=f"DreamBooth, {spec.label()}")
        note(args, "drawing the sample grid")
        prompts = [args.instance_prompt] * 8 + ([args.class_prompt] * 8 if args.class_prompt else [])
        with torch.no_grad():
            if args.on == "student":
                images = onestep.generate(components, prompts, list(range(len(prompts))), progress=False)
            else:
                images = sample(components, prompts, list(range(len(prompts))), progress=False)
        labelled_grid(np.concatenate([instance[:8], images]),
                      ["instance"] * len(instance[:8]) + prompts).save(tmp / "samples.png")
    trainable = sum(v.numel() for v in students.trainable_state(components.unet, spec).values())
    print(f"trained {spec.label()} ({trainable:,} values) in {minutes:.1f} min; wrote {out / ADAPTER_FILE}")
    return 0


# ----- evaluation on the embedded subject

def eval_prompts(count: int, seed: int) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """Groups of ``(prompt, asked colour, asked position)``."""
    rng = np.random.default_rng(seed)
    token, noun, own = novel.SUBJECT_TOKEN, novel.SUBJECT_CLASS, novel.SUBJECT_COLOR
    colors = [c for c in COLORS if c != novel.SUBJECT_COLOR]
    positions = list(POSITIONS)
    recolour = [colors[i] for i in rng.integers(len(colors), size=count)]
    placed = [positions[i] for i in rng.integers(len(positions), size=count)]
    return {
        "subject": [(novel.INSTANCE_PROMPT, own, None)] * count,
        "recoloured": [(f"a {c} {token} {noun}", c, None) for c in recolour],
        "placed": [(f"{novel.INSTANCE_PROMPT} {position_phrase(p)}", own, p) for p in placed],
        "class": [(f"a {c} {noun}", c, None) for c in recolour],
    }


def diversity(images: np.ndarray, feature_net) -> float:
    """Mean pairwise distance of the domain features: how different the images of one prompt are."""
    f = metrics.features(feature_net, images)
    d = torch.cdist(f, f)
    n = len(f)
    return float(d.sum() / (n * (n - 1)))


@writes("out")
def run_eval(args) -> int:
    out = fileio.check_output(args.out, args.overwrite)
    components = load_components(args.model)
    if args.student:
        D.prepare_unet(components, args.student)
    if args.adapter:
        students.apply_adapter_file(components.unet, args.adapter, name="subject")
    groups = eval_prompts(args.count, args.seed)
    seeds = [args.seed + i for i in range(args.count)]
    net = load_feature_net()
    results, grid, labels = {}, [], []
    for group, items in groups.items():
        prompts = [p for p, _, _ in items]
        if args.student:
            images = onestep.generate(components, prompts, seeds, progress=False)
        else:
            images = sample(components, prompts, seeds, progress=False)
        checks = [novel.subject_checks(img, color, position) for img, (_, color, position) in zip(images, items)]
        row = {key: float(np.mean([c[key] for c in checks])) for key in checks[0]}
        if group == "subject":
            row["diversity"] = diversity(images, net)
        results[group] = row
        grid.append(images[:8])
        labels += prompts[:8]
        print(f"{group}: " + ", ".join(f"{k} {v:.1%}" if k != "diversity" else f"{k} {v:.2f}" for k, v in row.items()))
    exemplars = np.stack([np.asarray(novel.render(novel.subject_scene(np.random.default_rng([args.seed, i]))))
                          for i in range(args.count)])
    summary = {"adapter": str(args.adapter or "none"), "sampling": "one step on the student" if args.student else
               "teacher, 25 DDIM steps, CFG 3", "images_per_group": args.count, "results": results,
               "exemplar_diversity": diversity(exemplars, net)}
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=1))
        labelled_grid(np.concatenate(grid), labels).save(tmp / "grid.png")
    print(f"wrote {out / 'metrics.json'} and {out / 'grid.png'}")
    return 0
