"""``wadi controlnet-train`` and ``wadi controlnet``: train a ControlNet for a teacher, and generate
or evaluate with it, one step from a student or multi-step from the teacher.

On the embedded world the condition is the scenes' silhouette (shapes white on black), rendered
on the fly; elsewhere ``--data`` names a JSONL file of ``{"image", "condition", "caption"}``.
The ControlNet starts from the teacher's UNet (the ControlNet recipe); the teacher stays frozen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wadi_core import controlnet as C
from wadi_core import fileio, students
from wadi_core.images import labelled_grid, read_image, save_pngs, side_by_side
from wadi_core.metrics import mask_iou
from wadi_core.prompts import read_text
from wadi_core.plots import loss_curves
from wadi_core.shapes import accuracy_report, render_batch, sample_scenes
from wadi_core.models import encode, load_components
from wadi_core.shapes.components import MODEL_DIR
from wadi_core.shapes.judge import foreground_mask
from wadi_core.sampling import image_size
from wadi_core.shapes.render import silhouette
from . import argtypes as A
from .outputs import writes

CHECKPOINT = "checkpoint"


def register(sub) -> None:
    p = sub.add_parser("controlnet-train", help="train a ControlNet for a teacher (embedded: silhouette control)")
    p.add_argument("--out", required=True, help="output folder (controlnet/ when done, checkpoint/, loss.png)")
    p.add_argument("--teacher", default=str(MODEL_DIR))
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

    g = sub.add_parser("controlnet", help="generate with a ControlNet: one step with --student, or multi-step; "
                                          "--eval measures mask IoU and prompt accuracy on the embedded world")
    g.add_argument("--controlnet", default=str(C.SHAPES_CONTROLNET),
                   help="a diffusers ControlNet folder (OUT/controlnet of controlnet-train; default: the shipped "
                        "silhouette ControlNet of the embedded world)")
    g.add_argument("--model", default=str(MODEL_DIR))
    g.add_argument("--student", help="a student / LoRaD file: one-step generation (else --steps of DDIM)")
    g.add_argument("--steps", type=A.positive_int, default=25)
    g.add_argument("--guidance", type=A.guidance, default=3.0)
    g.add_argument("--scale", type=A.non_negative, default=1.0, help="ControlNet conditioning scale")
    g.add_argument("--prompt", help="prompt (with --control)")
    g.add_argument("--control", help="the control image (PNG) for --prompt")
    g.add_argument("--eval", type=A.count, default=0, metavar="N", help="evaluate on N held-out embedded scenes")
    g.add_argument("--seed", type=A.seed, default=0)
    g.add_argument("--out", required=True, help="output folder (PNGs, grid.png, metrics.json with --eval)")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(run=run_generate)


# ----- data

def shapes_batch(n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images, silhouettes, captions)`` of ``n`` fresh scenes of the embedded world."""
    scenes = sample_scenes(n, split, seed=seed)
    hints = np.stack([np.asarray(silhouette(s)) for s in scenes])
    return render_batch(scenes), hints, [s.caption for s in scenes]


class JsonlData:
    """``{"image": path, "condition": path, "caption": text}`` per line, images resized to ``size``."""

    def __init__(self, path: str, size: int):
        from PIL import Image
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--data {path} does not exist; give a JSONL file with image, condition, caption")
        rows = []
        for number, line in enumerate(read_text(path, "--data file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"--data {path}, line {number} is not valid JSON ({err.msg}); write one "
                                 '{"image": ..., "condition": ..., "caption": ...} object per line') from None
        if not rows:
            raise ValueError(f"--data {path} has no rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"--data {path}, line {i + 1} is not a JSON object with image, condition, caption")
            missing = {"image", "condition", "caption"} - set(row)
            if missing:
                raise ValueError(f"--data {path}, line {i + 1}: missing {', '.join(sorted(missing))}")

        def load(name):
            file = (path.parent / name) if not Path(name).is_absolute() else Path(name)
            return np.asarray(read_image(file, f"image of --data {path}").resize((size, size), Image.BICUBIC))
        self.images = np.stack([load(r["image"]) for r in rows])
        self.hints = np.stack([load(r["condition"]) for r in rows])
        self.captions = [r["caption"] for r in rows]

    def batch(self, n: int, seed: int):
        index = np.random.default_rng(seed).integers(len(self.captions), size=n)
        return self.images[index], self.hints[index], [self.captions[i] for i in index]


# ----- training

def run_train(args) -> int:
    out = Path(args.out).expanduser()
    fileio.check_output(out, overwrite=True)  # its folder exists and can be written
    with fileio.output_lock(out):  # one run per folder; a killed run's checkpoint swap is finished first
        fileio.clean_leftovers(out / CHECKPOINT)
        return train(args, out)


def train(args, out: Path) -> int:
    state_file = out / CHECKPOINT / "state.pt"
    if args.resume and not state_file.is_file():
        raise FileNotFoundError(f"nothing to resume: {state_file} does not exist")
    if not args.resume:
        fileio.check_output(out, overwrite=False)
    embedded = Path(args.teacher).expanduser().resolve() == MODEL_DIR.resolve()
    if not embedded and not args.data:
        raise ValueError("a real teacher needs --data (JSONL of image, condition, caption)")
    teacher = load_components(args.teacher)
    size = image_size(teacher)
    data = JsonlData(args.data, size) if args.data else None
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    net = C.new_controlnet(teacher).train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    history, start = [], 0
    if args.resume:
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read the checkpoint {state_file} ({err}); it is damaged — start again in "
                             "another --out") from None
        missing = [k for k in ("controlnet", "opt", "history", "step") if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"the checkpoint {state_file} has no '{missing[0]}'; it was not written by wadi "
                             "controlnet-train or is damaged — start again in another --out")
        net.load_state_dict(state["controlnet"])
        opt.load_state_dict(state["opt"])
        history, start = state["history"], state["step"]
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="ControlNet", disable=args.quiet)
    for step in bar:
        seed = args.seed * 1_000_003 + step
        images, hints, captions = data.batch(args.batch_size, seed) if data else shapes_batch(args.batch_size, seed)
        gen = torch.Generator().manual_seed(seed)
        drop = torch.rand(len(captions), generator=gen) < args.caption_dropout
        captions = ["" if d else c for d, c in zip(drop.tolist(), captions)]
        with torch.no_grad():
            latents = encode(teacher, images, gen)
            cond = teacher.encode_prompts(captions)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, teacher.scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
        noisy = teacher.scheduler.add_noise(latents, noise, t)
        control = torch.from_numpy(hints).permute(0, 3, 1, 2).float() / 255.0
        down, mid = net(noisy, t, encoder_hidden_states=cond, controlnet_cond=control, return_dict=False)
        eps = teacher.unet(noisy, t, cond, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample
        loss = F.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < args.steps:
            with fileio.atomic_dir(out / CHECKPOINT, overwrite=True) as tmp:
                torch.save({"controlnet": net.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                            "history": history}, tmp / "state.pt")
    with fileio.atomic_dir(out / "controlnet", overwrite=True) as tmp:
        net.save_pretrained(tmp)
    loss_curves({"ControlNet denoising loss": history}, out / "loss.png", title="ControlNet training")
    print(f"wrote {out / 'controlnet'} ({args.steps} steps); loss curve in {out / 'loss.png'}")
    return 0


# ----- generation and evaluation

@writes("out")
def run_generate(args) -> int:
    out = fileio.check_output(args.out, args.overwrite)
    if args.eval:
        _, hints, captions = shapes_batch(args.eval, args.seed, split="heldout")
    elif args.prompt and args.control:
        hints, captions = np.asarray(read_image(args.control, "control image"))[None], [args.prompt]
    else:
        raise ValueError("give --prompt and --control, or --eval N")
    components = load_components(args.model)
    net = C.load_controlnet(args.controlnet)
    C.check_fits(net, components.unet)
    if args.student:
        students.apply_adapter_file(components.unet, args.student)
    steps = None if args.student else args.steps
    label = "student, 1 step" if args.student else f"{args.steps} DDIM steps, CFG {args.guidance}"
    seeds = [args.seed + i for i in range(len(captions))]
    C.generate(components, net, captions[:1], hints[:1], seeds[:1], steps, args.guidance, args.scale)  # warm-up
    start = time.perf_counter()
    images = C.generate(components, net, captions, hints, seeds, steps, args.guidance, args.scale)
    seconds = time.perf_counter() - start
    with fileio.atomic_dir(out, args.overwrite) as tmp:
        save_pngs(images, captions, tmp, seeds)
        side_by_side({"control": hints[:16], label: images[:16]}, captions[:16]).save(tmp / "grid.png")
        if args.eval:
            ious = [mask_iou(foreground_mask(img), h[..., 0] > 127) for img, h in zip(images, hints)]
            accuracy = accuracy_report(images, captions)
            metrics = {"sampling": label, "scenes": len(captions), "mask_iou": float(np.mean(ious)),
                       "prompt_accuracy": accuracy, "seconds_per_image": seconds / len(captions)}
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
            print(f"{label}: mask IoU {metrics['mask_iou']:.3f}, colour {accuracy.get('single/color', 0):.1%}, "
                  f"{metrics['seconds_per_image'] * 1000:.1f} ms per image")
        else:
            labelled_grid(images, captions).save(tmp / "image.png")
    print(f"wrote {out}")
    return 0
