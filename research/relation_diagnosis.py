"""Why a shapes teacher gets relation prompts wrong: axis or side, text encoder or UNet.

    python research/relation_diagnosis.py                       # the shipped teacher
    python research/relation_diagnosis.py --fine-tune 1500 --lr 6e-4 --out runs/relation-ft

Prints, for the training and the held-out relation compositions, how often both colours are found,
the axis is right (side by side vs one over the other) and the side is right given the axis; how
well a linear probe reads the relation word from the text encoder's second-object colour token; and
whether the UNet's mean x0 prediction puts colour A on the left for "A left of B" (a profile across
the image). With --fine-tune N it first fine-tunes a copy on relation scenes only, with the layout
loss of wadi_core.shapes.train_teacher, and exports it to --out. Results: docs/lab/shapes.md, "Session 8".
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wadi_core.shapes import side_loss  # noqa: E402
from wadi_core.shapes.train_teacher import diffusion_loss  # noqa: E402
from wadi_core import sampling  # noqa: E402
from wadi_core.ema import EMA  # noqa: E402
from wadi_core.models import load_components  # noqa: E402
from wadi_core.shapes import components as C  # noqa: E402
from wadi_core.shapes.dataset import all_prompts, prompts_of  # noqa: E402
from wadi_core.shapes.judge import AXIS_OF, detect_objects, objects_of_prompt, relation_between  # noqa: E402
from wadi_core.shapes.world import COLORS, RELATIONS  # noqa: E402


def fine_tune(c: C.Components, steps: int, lr: float, min_t: int, seed: int, side_weight: float = 0.0) -> None:
    """Relation scenes only; half of each batch scored by the x0 layout loss at t >= min_t; with
    side_weight, plus the side loss (wadi_core/shapes/side_loss.py) through a linear head dropped afterwards.

    Not train_teacher's train_unet: its stages draw from the run's mix of single and relation
    scenes and use a cosine schedule; this probe wants relation scenes only at a constant rate."""
    args = types.SimpleNamespace(seed=seed, batch=64, relation_share=1.0, caption_dropout=0.1, layout_share=0.5,
                                 layout_min_t=min_t)
    c.vae.requires_grad_(False)
    c.unet.train().requires_grad_(True)
    c.text_encoder.train().requires_grad_(True)
    params = list(c.unet.parameters()) + list(c.text_encoder.parameters())
    head = side_loss.new_head(c.text_encoder.config.hidden_size, seed)
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=lr, weight_decay=0.01)
    ema = EMA(params, 0.99)
    for step in (bar := tqdm(range(steps), desc="relation fine-tune")):
        parts = diffusion_loss(c, args, "unet", 100_000 + step, layout_weight=1.0)
        if side_weight:
            parts["side"] = side_loss.side_loss(c, head, side_loss.prompts_for_step(seed, step))
            parts["loss"] = parts["loss"] + side_weight * parts["side"]
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        bar.set_postfix({k: f"{v.item():.4f}" for k, v in parts.items()})
    ema.copy_to(params)
    c.unet.eval().requires_grad_(False)
    c.text_encoder.eval().requires_grad_(False)


IMAGES_PER_SPLIT = 214  # the 107 held-out relation compositions twice; the first 214 training ones


def side_and_axis(c: C.Components, split: str, guidance: float) -> str:
    prompts = (list(prompts_of(split, "relation")) * 2)[:IMAGES_PER_SPLIT]
    images = sampling.sample(c, [p.caption() for p in prompts], seeds=list(range(len(prompts))), steps=25,
                             guidance=guidance, progress=False)
    placed = collections.Counter()
    for image, prompt in zip(images, prompts):
        found = objects_of_prompt(detect_objects(image), prompt)
        placed[(prompt.relation, relation_between(*found) if all(found) else None)] += 1
    found = sum(n for (_, got), n in placed.items() if got)
    axis = sum(n for (asked, got), n in placed.items() if got and AXIS_OF[got] == AXIS_OF[asked])
    side = sum(n for (asked, got), n in placed.items() if got == asked)
    rows = [f"{split}: both colours found {found}/{len(prompts)}, axis right {axis / max(found, 1):.1%}, "
            f"side right given the axis {side / max(axis, 1):.1%}"]
    for asked in RELATIONS:
        rows.append(f"  asked '{asked}': " + ", ".join(f"{got or 'colour missing'} {n}"
                                                      for (a, got), n in sorted(placed.items(), key=str) if a == asked))
    return "\n".join(rows)


def relation_probe(c: C.Components) -> float:
    """Held-out accuracy of a linear probe reading the relation word from the second object's colour token."""
    prompts = list(all_prompts("relation"))
    features, labels = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), 128):
            batch = prompts[i:i + 128]
            embeddings = c.encode_prompts([p.caption() for p in batch])
            for prompt, embedding in zip(batch, embeddings):
                ids = c.tokenizer(prompt.caption(), truncation=True).input_ids
                colour = c.tokenizer(prompt.objects[1][0], add_special_tokens=False).input_ids[0]
                if colour not in ids:
                    continue
                features.append(embedding[len(ids) - 1 - ids[::-1].index(colour)])
                labels.append(RELATIONS.index(prompt.relation))
    x, y = torch.stack(features), torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:len(x) * 3 // 4], order[len(x) * 3 // 4:]
    probe = torch.nn.Linear(x.shape[1], len(RELATIONS))
    opt = torch.optim.Adam(probe.parameters(), 1e-2)
    for _ in range(500):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[train]), y[train]).backward()
        opt.step()
    return (probe(x[test]).argmax(1) == y[test]).float().mean().item()


def mean_x0(c: C.Components, prompt: str, t: int, guidance: float, n: int = 64) -> np.ndarray:
    """The decoded x0 prediction at timestep t averaged over n noises: where the model puts things."""
    abar = c.scheduler.alphas_cumprod[t]
    z = torch.randn(n, *sampling.latent_shape(c), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text, empty = c.encode_prompts([prompt] * n), c.encode_prompts([""] * n)
        steps = torch.full((n,), t)
        uncond = c.unet(z, steps, empty).sample
        eps = uncond + guidance * (c.unet(z, steps, text).sample - uncond)
        x0 = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
        images = c.vae.decode(x0 / c.vae.config.scaling_factor).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy().mean(0)


def unit(rgb) -> np.ndarray:
    v = np.asarray(rgb, np.float32)
    return v / np.linalg.norm(v)


def lateral_profile(c: C.Components, left: str, right: str, colour: np.ndarray, t: int, guidance: float) -> str:
    """Mean x0 for `left` minus that for `right`, projected on an RGB direction, across x (left to
    right): positive on the left half and negative on the right means that colour is put on the left."""
    difference = (mean_x0(c, left, t, guidance) - mean_x0(c, right, t, guidance)) @ colour
    return " ".join(f"{v:6.1f}" for v in difference.mean(0)[::4])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(C.MODEL_DIR))
    p.add_argument("--fine-tune", type=int, default=0, metavar="STEPS")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--min-t", type=int, default=500)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--side-weight", type=float, default=0.0,
                   help="with --fine-tune: weight of an auxiliary loss asking the text encoder for each object's "
                        "side and colour on the tokens after the first object")
    p.add_argument("--out", help="where to export the fine-tuned copy")
    p.add_argument("--guidance", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.fine_tune and not args.out:
        p.error("--fine-tune needs --out for the fine-tuned copy")
    c = load_components(args.model)
    if args.fine_tune:
        started = time.time()
        fine_tune(c, args.fine_tune, args.lr, args.min_t, args.seed, args.side_weight)
        C.save_model_folder(c, args.out)
        print(f"fine-tuned {args.fine_tune} steps in {(time.time() - started) / 60:.1f} min -> {args.out}")
    for split in ("train", "heldout"):
        print(side_and_axis(c, split, args.guidance))
    print(f"linear probe, relation word from the second colour token: {relation_probe(c):.1%}")
    for t in (999, 600):
        print(f"t={t}: 'left of' minus 'right of' along colour A - B, and 'on the left' minus 'on the right'")
        for a, b in (("red", "blue"), ("green", "yellow"), ("purple", "orange")):
            towards_a = unit(np.subtract(COLORS[a], COLORS[b]))
            print(f"  {a} circle / {b} square: " + lateral_profile(
                c, f"a {a} circle left of a {b} square", f"a {a} circle right of a {b} square", towards_a, t,
                args.guidance))
            print(f"  {a} circle alone:{' ' * (len(b) + 6)}" + lateral_profile(
                c, f"a {a} circle on the left", f"a {a} circle on the right", unit(COLORS[a]), t, args.guidance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
