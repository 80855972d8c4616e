"""``wadi reversion``: learn a relation token from exemplar images against the teacher (ReVersion), and
``wadi reversion-eval``: measure it on the embedded world with the teacher (25 steps) and the one-step
student, against the plain initialiser word.

Without ``--exemplars`` an embedded world relation that no caption names is rendered into
OUT/exemplars: ``--relation inside`` (a small shape inside a large one) or ``larger`` (the first
shape larger than the second).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from wadi_core import fileio, students
from wadi_core.sampling import onestep
from wadi_core.models import embeddings
from wadi_core.images import labelled_grid
from wadi_core.plots import loss_curves
from wadi_core.reversion import ReVersionConfig, read_exemplars, train_relation
from wadi_core.sampling import image_size, sample
from wadi_core.shapes import novel
from wadi_core.models import load_components
from wadi_core.shapes.components import MODEL_DIR

from .reporting import note, step_progress
from . import argtypes as A
from .outputs import writes


def register(sub) -> None:
    p = sub.add_parser("reversion", help="learn a relation token <R> from exemplar images (ReVersion)")
    p.add_argument("--out", required=True, help="output folder: reversion.safetensors, embeddings/NAME.safetensors, "
                                                "loss.png, samples.png")
    p.add_argument("--exemplars", help="folder of images + text.json (image name -> captions with the token); "
                                       "default: render the embedded world's 'inside' relation")
    p.add_argument("--relation", default="larger", choices=list(novel.NOVEL_RELATIONS),
                   help="the embedded relation to render exemplars of (without --exemplars)")
    p.add_argument("--count", type=A.positive_int, default=12, help="exemplars to render for the embedded relation")
    p.add_argument("--teacher", default=str(MODEL_DIR), help="the multi-step model (diffusers SD folder)")
    p.add_argument("--token", default="<R>", help="the new relation token (must not be in the vocabulary)")
    p.add_argument("--init", help="initialiser word(s) of the token's embedding (default: the embedded relation's, "
                                  "'in' for inside, 'and' for larger; 'and' with --exemplars)")
    p.add_argument("--name", default="wadi_relation", help="name of the textual-inversion file (embedding:NAME)")
    defaults = ReVersionConfig()
    p.add_argument("--steps", type=A.positive_int, default=defaults.steps)
    p.add_argument("--batch-size", type=A.positive_int, default=defaults.batch_size)
    p.add_argument("--lr", type=A.learning_rate, default=defaults.lr)
    p.add_argument("--steer-weight", type=A.non_negative, default=defaults.steer_weight,
                   help="weight of the relation-steering loss (0 = plain textual inversion)")
    p.add_argument("--importance-alpha", type=A.non_negative, default=defaults.importance_alpha,
                   help="relation-focal timestep sampling strength (0 = uniform)")
    p.add_argument("--seed", type=A.seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run_train)

    e = sub.add_parser("reversion-eval", help="measure a token learned on an embedded relation: teacher 25 steps "
                                              "and one-step student on new entity pairs, against the initialiser word")
    e.add_argument("--embedding", required=True, help="reversion.safetensors from wadi reversion")
    e.add_argument("--student", help="a distilled student adapter for the one-step rows")
    e.add_argument("--model", default=str(MODEL_DIR))
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
    out = fileio.check_output(args.out, args.overwrite)
    teacher = load_components(args.teacher)
    size = image_size(teacher)
    relation = None if args.exemplars else novel.novel_relation(args.relation)
    init = args.init or (relation.init if relation else "and")
    config = ReVersionConfig(token=args.token, init=init, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, steer_weight=args.steer_weight, importance_alpha=args.importance_alpha,
                             seed=args.seed)
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        if args.exemplars:
            folder = Path(args.exemplars)
        else:
            if Path(args.teacher).expanduser().resolve() != MODEL_DIR.resolve():
                raise ValueError("a real teacher needs --exemplars (a folder of images and text.json)")
            folder = novel.write_relation_exemplars(tmp / "exemplars", relation.name, args.count, args.seed,
                                                    args.token)
        exemplars = read_exemplars(folder, args.token, size)
        start = time.perf_counter()
        with step_progress(args, config.steps, f"ReVersion {args.token}", ("denoise", "steer")) as progress:
            vector, history = train_relation(teacher, exemplars, config, progress)
        minutes = (time.perf_counter() - start) / 60
        meta = {"wadi.init": init, "wadi.relation": relation.name if relation else "", "wadi.base": str(args.teacher),
                "wadi.steps": str(args.steps),
                "wadi.steer_weight": str(args.steer_weight), "wadi.exemplars": str(len(exemplars.images))}
        embeddings.save_embedding(vector, tmp / "reversion.safetensors", args.token, meta)
        (tmp / "embeddings").mkdir()
        embeddings.save_textual_inversion(vector, tmp / "embeddings" / f"{args.name}.safetensors")
        (tmp / "history.json").write_text(json.dumps(history))
        loss_curves({"denoising": [h["denoise"] for h in history],
                     f"steering x {args.steer_weight}": [h["steer"] * args.steer_weight for h in history]},
                    tmp / "loss.png", title=f"ReVersion {args.token}")
        note(args, "drawing the sample grid")
        captions = [c[0] for c in exemplars.captions[:8]]
        images = sample(teacher, captions, list(range(len(captions))), 25, 3.0, progress=False)
        labelled_grid(np.concatenate([exemplars.images[:8], images]),
                      [f"exemplar: {c}" for c in captions] + [f"teacher: {c}" for c in captions]).save(
            tmp / "samples.png")
    print(f"learned {args.token} in {minutes:.1f} min; wrote {out / 'reversion.safetensors'} and "
          f"{out / 'embeddings' / (args.name + '.safetensors')} (ComfyUI: embedding:{args.name}; A1111: {args.name})")
    return 0


def load_with_embedding(model: str, embedding: str, student: str | None = None):
    components = load_components(model)
    token = embeddings.load_embedding(components, embedding)
    if student:
        students.apply_adapter_file(components.unet, student)
    return components, token


def vae_round_trip(components, relation, pairs, seed: int) -> np.ndarray:
    """Renders of the relation for ``pairs``, encoded and decoded by the model's VAE: the best any model
    drawing through this VAE can be judged to do."""
    from wadi_core.models import decode, encode
    from wadi_core.shapes.render import render
    rng = np.random.default_rng([seed, 3])
    renders = np.stack([np.asarray(render(novel.Scene(relation.scene(a, b, rng), "black", ""))) for a, b in pairs])
    return decode(components, encode(components, renders))


@writes("out")
def run_eval(args) -> int:
    out = fileio.check_output(args.out, args.overwrite)
    meta = embeddings.read_embedding(args.embedding)[2]
    if not meta.get("wadi.relation"):
        raise ValueError(f"{args.embedding} was not learned on an embedded relation "
                         f"({', '.join(novel.NOVEL_RELATIONS)}); reversion-eval measures those only")
    relation = novel.novel_relation(meta["wadi.relation"])
    baseline = args.baseline or meta.get("wadi.init") or relation.init
    rng = np.random.default_rng(args.seed)
    pool = relation.pairs("new")
    pairs = [pool[i] for i in rng.integers(len(pool), size=args.count)]
    seeds = [args.seed + i for i in range(args.count)]
    rows, grid, labels = {}, [], []
    teacher, token = load_with_embedding(args.model, args.embedding)  # loaded once: ceiling, rows, word swap
    ceiling = vae_round_trip(teacher, relation, pairs, args.seed)
    rows["renders through the VAE (the ceiling)"] = best = novel.relation_accuracy(relation.name, ceiling, pairs)
    print(f"renders through the VAE: '{relation.name}' holds {best['holds']:.1%}")
    models = [("teacher", None)] + ([("student", args.student)] if args.student else [])
    drawn = {}
    for name, student in models:
        components = load_with_embedding(args.model, args.embedding, student)[0] if student else teacher
        for word in (token, baseline):
            prompts = [novel.relation_caption(first, second, word) for first, second in pairs]
            start = time.perf_counter()
            if student:
                images = onestep.generate(components, prompts, seeds, progress=False)
            else:
                images = sample(components, prompts, seeds, args.steps, args.guidance, progress=False)
            seconds = time.perf_counter() - start
            label = f"{name} ({'1 step' if student else f'{args.steps} steps'}), '{word}'"
            rows[label] = {**novel.relation_accuracy(relation.name, images, pairs),
                           "ms_per_image": 1000 * seconds / len(prompts)}
            print(f"{label}: '{relation.name}' holds {rows[label]['holds']:.1%}, both shapes {rows[label]['both']:.1%}")
            grid.append(images[:8])
            labels += [f"{label}: {p}" for p in prompts[:8]]
            drawn[name, word] = images.astype(np.float32)
    # Does the teacher read the word between the two entities at all? Pixel change from swapping it.
    opposite = [sample(teacher, [novel.relation_caption(a, b, word) for a, b in pairs], seeds, args.steps,
                       args.guidance, progress=False).astype(np.float32) for word in ("left of", "right of")]
    learned = np.abs(drawn["teacher", token] - drawn["teacher", baseline]).mean()
    sensitivity = {"'left of' vs 'right of'": float(np.abs(opposite[0] - opposite[1]).mean()),
                   f"'{token}' vs '{baseline}'": float(learned)}
    print("teacher, mean pixel change (0-255) from the word between the entities: "
          + ", ".join(f"{k}: {v:.2f}" for k, v in sensitivity.items()))
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps({"relation": relation.name, "prompts": args.count,
                                                      "results": rows, "teacher_pixel_change": sensitivity},
                                                     indent=1))
        labelled_grid(np.concatenate(grid), labels).save(tmp / "grid.png")
    print(f"wrote {out / 'metrics.json'} and {out / 'grid.png'}")
    return 0
