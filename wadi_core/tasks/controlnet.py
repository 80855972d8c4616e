"""ControlNets for a teacher: a new one initialised from its UNet, and loading a trained one. Generation
under control is :class:`wadi_core.sampling.Controlled` around the one-step or the multi-step sampler."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import fileio
from ..images import labelled_grid, read_image, save_pngs, side_by_side
from ..models import encode, family_of_path
from ..plots import loss_curves
from ..progress import QUIET, Progress
from ..prompts import read_text

from ..sampling import Controlled, MultiStep, OneStep, build_generator, image_size
from ..sampling.controlnet import ControlNetMismatch, check_fits  # noqa: F401  (part of this module's face)
from ..sampling.prediction import denoising_target




def new_controlnet(components, conditioning_channels: int = 3):
    """A ControlNet initialised from the model's UNet (the ControlNet recipe), its condition encoder
    downsampling by the VAE's factor (8 for SD, 4 for the shapes world) so the hint fits the latents."""
    from diffusers import ControlNetModel

    if components.unet.config.get("addition_embed_type") == "text_time":
        raise ValueError("ControlNets are trained for SD1.x / SD2.x teachers and the embedded one; an SDXL ControlNet "
                         "needs SDXL's added conditions, which wadi's ControlNet task does not pass yet")
    downsamples = len(components.vae.config.block_out_channels) - 1
    channels = (16, 32, 96, 256, 256)[: downsamples + 1]
    return ControlNetModel.from_unet(components.unet, conditioning_embedding_out_channels=channels,
                                     conditioning_channels=conditioning_channels)


def load_controlnet(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """A diffusers ``ControlNetModel`` from its folder (config.json + safetensors)."""
    from diffusers import ControlNetModel

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a diffusers ControlNet folder (no config.json); give the folder "
                                "that ControlNetModel.save_pretrained wrote")
    return ControlNetModel.from_pretrained(str(path), torch_dtype=dtype).eval().requires_grad_(False)


def generate(components, controlnet, prompts: Sequence[str], control_images: np.ndarray,
             seeds: Sequence[int] | None = None, steps: int | None = None, guidance: float = 3.0,
             scale: float = 1.0, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Images under ControlNet control: one step from a student (``steps=None``), or ``steps`` DDIM steps with
    CFG ``guidance`` from a multi-step model (the :class:`~wadi_core.sampling.Controlled` sampler)."""
    inner = OneStep() if steps is None else MultiStep(steps=steps, guidance=guidance, batch_size=batch_size)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    return Controlled(controlnet, control_images, inner, scale, batch_size)(components, prompts, seeds, progress)


# ----- data

def shapes_batch(n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images, silhouettes, captions)`` of ``n`` fresh scenes of the embedded world."""
    from ..shapes import render_batch, sample_scenes
    from ..shapes.render import silhouette

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

CHECKPOINT = "checkpoint"


def train(model, out: str | os.PathLike, data: str | None = None, steps: int = 1500, batch_size: int = 32,
          lr: float = 1e-4, caption_dropout: float = 0.1, checkpoint_every: int = 250, seed: int = 0,
          resume: bool = False, progress: Progress = QUIET, backbone=None) -> Path:
    """Train a ControlNet for ``model`` (the ControlNet recipe: initialised from the teacher's UNet, the teacher
    frozen) on ``data`` (JSONL of image, condition, caption), or on the embedded world's silhouettes; write
    ``out``/controlnet, resumable checkpoints and loss.png. Returns the ControlNet folder."""
    out = Path(out).expanduser()
    fileio.check_output(out, overwrite=True)  # its folder exists and can be written
    with fileio.output_lock(out):  # one run per folder; a killed run's checkpoint swap is finished first
        fileio.clean_leftovers(out / CHECKPOINT)
        state_file = out / CHECKPOINT / "state.pt"
        if resume and not state_file.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_file} does not exist")
        if not resume:
            fileio.check_output(out, overwrite=False)
        if not data and family_of_path(model) != "shapes":
            raise ValueError("a real teacher needs --data (JSONL of image, condition, caption)")
        teacher = build_generator(model, backbone=backbone).components
        size = image_size(teacher)
        rows = JsonlData(data, size) if data else None
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        net = new_controlnet(teacher).train()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
        history, start = [], 0
        if resume:
            history, start = _load_checkpoint(state_file, net, opt)
        with progress.steps(steps, "ControlNet", ("loss",)) as report:
            for step in range(start, steps):
                loss = _train_step(teacher, net, opt, rows, seed * 1_000_003 + step, batch_size, caption_dropout)
                history.append(loss)
                report(step + 1, {"step": step + 1, "loss": loss})
                if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
                    with fileio.atomic_dir(out / CHECKPOINT, overwrite=True) as tmp:
                        torch.save({"controlnet": net.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                                    "history": history}, tmp / "state.pt")
        with fileio.atomic_dir(out / "controlnet", overwrite=True) as tmp:
            net.save_pretrained(tmp)
        loss_curves({"ControlNet denoising loss": history}, out / "loss.png", title="ControlNet training")
    return out / "controlnet"


def _load_checkpoint(state_file: Path, net, opt) -> tuple[list[float], int]:
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
    return state["history"], state["step"]


def _train_step(teacher, net, opt, rows, seed: int, batch_size: int, caption_dropout: float) -> float:
    """One step of the ControlNet's denoising loss, its batch and noise fixed by ``seed`` (so resuming is exact)."""
    images, hints, captions = rows.batch(batch_size, seed) if rows else shapes_batch(batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    drop = torch.rand(len(captions), generator=gen) < caption_dropout
    captions = ["" if d else c for d, c in zip(drop.tolist(), captions)]
    with torch.no_grad():
        latents = encode(teacher, images, gen)
        cond = teacher.encode_prompts(captions)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, teacher.scheduler.config.num_train_timesteps, (len(captions),), generator=gen)
    noisy = teacher.scheduler.add_noise(latents, noise, t)
    control = torch.from_numpy(hints).permute(0, 3, 1, 2).float() / 255.0
    down, mid = net(noisy, t, encoder_hidden_states=cond, controlnet_cond=control, return_dict=False)
    out = teacher.unet(noisy, t, cond, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    loss = F.mse_loss(out, denoising_target(teacher.scheduler, latents, noise, t))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# ----- generation and evaluation

def draw(controlnet, out: str | os.PathLike, model=None, student=None, steps: int = 25, guidance: float = 3.0,
         scale: float = 1.0, prompt: str | None = None, control=None, eval_scenes: int = 0, seed: int = 0,
         overwrite: bool = False, report: Callable[[str], None] = lambda text: None, backbone=None,
         one_step: bool = False, device=None, dtype=None) -> dict | None:
    """Images under ``controlnet`` for ``prompt`` and the ``control`` image, or for ``eval_scenes`` held-out scenes
    of the embedded world (then also their mask IoU and prompt accuracy): one step with ``student``, else
    ``steps`` DDIM steps, on ``device`` with the UNet and ControlNet in ``dtype`` (as ``build_generator`` takes
    them). Writes the PNGs and grid.png (and metrics.json) to ``out``; returns the metrics."""
    from ..metrics import mask_iou
    from ..shapes import accuracy_report
    from ..shapes.judge import foreground_mask

    with fileio.claim(out, overwrite) as out:
        if eval_scenes:
            _, hints, captions = shapes_batch(eval_scenes, seed, split="heldout")
        elif prompt and control:
            hints, captions = np.asarray(read_image(control, "control image"))[None], [prompt]
        else:
            raise ValueError("give --prompt and --control, or --eval N")
        net = load_controlnet(controlnet)
        components = build_generator(model, [(student, 1.0)] if student else [], backbone=backbone, device=device,
                                     dtype=dtype).components
        check_fits(net, components.unet)
        one_step = one_step or bool(student)  # a student adapter, or a merged / released student (--unet)
        label = "student, 1 step" if one_step else f"{steps} DDIM steps, CFG {guidance}"
        seeds = [seed + i for i in range(len(captions))]
        generate(components, net, captions[:1], hints[:1], seeds[:1], None if one_step else steps, guidance,
                 scale)  # warm-up
        start = time.perf_counter()
        images = generate(components, net, captions, hints, seeds, None if one_step else steps, guidance, scale)
        seconds = time.perf_counter() - start
        metrics = None
        with fileio.atomic_dir(out, overwrite) as tmp:
            save_pngs(images, captions, tmp, seeds)
            side_by_side({"control": hints[:16], label: images[:16]}, captions[:16]).save(tmp / "grid.png")
            if eval_scenes:
                ious = [mask_iou(foreground_mask(img), h[..., 0] > 127) for img, h in zip(images, hints)]
                accuracy = accuracy_report(images, captions)
                metrics = {"sampling": label, "scenes": len(captions), "mask_iou": float(np.mean(ious)),
                           "prompt_accuracy": accuracy, "seconds_per_image": seconds / len(captions)}
                (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
                report(f"{label}: mask IoU {metrics['mask_iou']:.3f}, colour "
                       f"{accuracy.get('single/color', 0):.1%}, {metrics['seconds_per_image'] * 1000:.1f} ms per image")
            else:
                labelled_grid(images, captions).save(tmp / "image.png")
    return metrics
