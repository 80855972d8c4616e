"""Train the embedded default model from the shapes renderer: the VAE, then the text encoder
and the UNet together, and export them as a diffusers StableDiffusionPipeline folder.

    python -m wadi_core.shapes.train_teacher --work runs/teacher --export wadi_core/shapes/model

Reproducible from --seed (each step's batch and noise derive from the seed and the step), and
resumable: a checkpoint is written atomically every --checkpoint-every steps and at the end of
each stage; --resume continues from it. The exported UNet holds the EMA weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wadi_core import fileio
from wadi_core.ema import EMA
from wadi_core.images import to_tensor
from wadi_core.schedules import cosine_lr
from wadi_core.shapes import components as C
from wadi_core.shapes.dataset import render_batch, sample_scenes
from . import side_loss

STATE = "state.pt"
# Settings of the layout loss: they may be changed when a finished run is resumed for a layout stage.
LATE_SETTINGS = ("layout_weight", "layout_min_t", "layout_share", "layout_steps", "layout_lr", "layout_from",
                 "side_weight", "side_from")
# Settings that decide the VAE stage: a run may reuse the finished VAE of another run that agrees on them.
VAE_SETTINGS = ("seed", "vae_steps", "vae_batch", "vae_lr", "relation_share")
# Settings added after runs were made with them absent: an old state holds the value they had then.
LATER_DEFAULTS = {"latent_pool": 0, "layout_from": 0, "side_weight": 0.0, "side_from": 0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for checkpoints and logs")
    p.add_argument("--export", default=None, help="write the finished model folder here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --export folder")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions (for CFG)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--relation-share", type=float, default=0.5)
    p.add_argument("--layout-weight", type=float, default=0.0,
                   help="weight of the layout loss: a share of each batch (--layout-share) is drawn from "
                        "t >= --layout-min-t and scored in x0 space (see diffusion_loss); 0 trains with the plain eps loss")
    p.add_argument("--layout-min-t", type=int, default=900)
    p.add_argument("--layout-share", type=float, default=0.5,
                   help="share of each batch scored by the layout loss (every 1/share-th sample)")
    p.add_argument("--layout-steps", type=int, default=0,
                   help="after the UNet stage, fine-tune text encoder and UNet this many steps with the layout "
                        "loss (--layout-weight, default 1 here); may be added to a finished run with --resume")
    p.add_argument("--layout-lr", type=float, default=2e-4)
    p.add_argument("--layout-from", type=int, default=0, metavar="STEP",
                   help="in the UNet stage, add the layout loss from this step on (the model learns colour and "
                        "shape first; the x0 term's large gradients slow that down when present from step 0)")
    p.add_argument("--side-weight", type=float, default=0.0,
                   help="weight of the side loss (wadi_core/shapes/side_loss.py): the text encoder learns to say which "
                        "object of a relation goes on which side; without it the teacher gets the order of "
                        "relations at random. In the UNet and layout stages")
    p.add_argument("--side-from", type=int, default=0, metavar="STEP",
                   help="in the UNet stage, add the side loss from this step on (0, the default, is the measured "
                        "best: started late it no longer teaches position, docs/lab/shapes.md)")
    p.add_argument("--latent-pool", type=int, default=0, metavar="N",
                   help="encode N rendered training scenes once after the VAE stage and draw the UNet stage's "
                        "batches from them (saves the VAE encoder pass of every step, ~20%% of its time); "
                        "0 renders and encodes fresh scenes every step")
    p.add_argument("--vae-from", default=None, metavar="WORK",
                   help="skip the VAE stage: start from the finished VAE of the run in this folder (it must "
                        "have the same seed and VAE settings, so the result equals training it again)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of the whole run, VAE and UNet "
                        "counted together; --resume continues")
    args = p.parse_args(argv)
    if not 0 < args.layout_share <= 0.5:
        p.error("--layout-share must be in (0, 0.5]: the rest of the batch learns the eps loss")
    if args.side_weight < 0 or args.layout_weight < 0:
        p.error("--side-weight and --layout-weight must be >= 0 (0 turns the loss off)")
    return args


class Interrupted(Exception):
    """Raised at --stop-after, after the checkpoint is written."""


def _maybe_stop(args, stage_offset: int, step: int, save) -> None:
    if args.stop_after is not None and stage_offset + step + 1 >= args.stop_after:
        save()
        raise Interrupted


def images_for_step(seed: int, stage: str, step: int, batch: int, relation_share: float):
    """The batch of a given step (deterministic, so a resumed run sees the same data)."""
    scenes = sample_scenes(batch, "train", seed=seed * 1_000_003 + step * 2 + (stage == "unet"),
                           relation_share=relation_share)
    return to_tensor(render_batch(scenes)), [s.caption for s in scenes]


def save_state(work: Path, state: dict) -> None:
    with fileio.atomic_file(work / STATE, overwrite=True) as tmp:
        torch.save(state, tmp)


def train_vae(c: C.Components, args, state: dict, work: Path) -> None:
    vae = c.vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, fused=True)
    if state.get("vae_opt"):
        opt.load_state_dict(state["vae_opt"])
    start = state["step"]
    bar = tqdm(range(start, args.vae_steps), desc="VAE", initial=start, total=args.vae_steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = args.vae_lr * cosine_lr(step, args.vae_steps, 50)
        images, _ = images_for_step(args.seed, "vae", step, args.vae_batch, args.relation_share)
        torch.manual_seed(args.seed * 7919 + step)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        loss = rec + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.set_postfix(recon=f"{rec.item():.4f}")
        state["log"].append({"stage": "vae", "step": step, "loss": rec.item()})
        def save():
            state.update(step=step + 1, vae=vae.state_dict(), vae_opt=opt.state_dict())
            save_state(work, state)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.vae_steps:
            save()
        _maybe_stop(args, 0, step, save)
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # SD's latent scaling: unit variance latents for the UNet
        images, _ = images_for_step(args.seed, "scale", 0, 512, args.relation_share)
        std = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    state.update(stage="unet", step=0, vae=vae.state_dict(), vae_config=dict(vae.config), vae_opt=None)
    save_state(work, state)


def build_latent_pool(c: C.Components, args) -> dict:
    """Posterior means and stds of ``--latent-pool`` training scenes, encoded once by the finished VAE.

    Deterministic from the seed, so a resumed run rebuilds the same pool instead of storing it."""
    chunk, n = 256, args.latent_pool
    means, stds, captions = [], [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, chunk), desc="latent pool"):
            scenes = sample_scenes(min(chunk, n - i), "train", seed=args.seed * 1_000_003 + 500_000_000 + i,
                                   relation_share=args.relation_share)
            dist = c.vae.encode(to_tensor(render_batch(scenes))).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
            captions += [s.caption for s in scenes]
    return {"mean": torch.cat(means), "std": torch.cat(stds), "captions": captions}


def latents_for_step(c: C.Components, args, stage: str, step: int, gen: torch.Generator, pool: dict | None):
    """Scaled VAE latents and captions of one step's batch: fresh renders, or a draw from the pool."""
    if pool is None:
        images, captions = images_for_step(args.seed, stage, step, args.batch, args.relation_share)
        with torch.no_grad():
            latents = c.vae.encode(images).latent_dist.sample(gen)
    else:
        pick = torch.randint(len(pool["captions"]), (args.batch,),
                             generator=torch.Generator().manual_seed(args.seed * 15485863 + step + (stage == "layout")))
        captions = [pool["captions"][i] for i in pick.tolist()]
        mean, std = pool["mean"][pick], pool["std"][pick]
        latents = mean + std * torch.randn(mean.shape, generator=gen)
    return latents * c.vae.config.scaling_factor, captions


def fill_later_defaults(saved: dict, current: dict) -> None:
    """Give a saved settings dict the old defaults of settings added since it was written."""
    for key, old_default in LATER_DEFAULTS.items():
        if key in current:
            saved.setdefault(key, old_default)


def diffusion_loss(c: C.Components, args, stage: str, step: int, layout_weight: float,
                   pool: dict | None = None) -> dict[str, torch.Tensor]:
    """The denoising loss of one step: eps MSE, plus with ``layout_weight`` an x0-space term on a
    high-noise share of the batch (``--layout-share``).

    Why the layout term: with SD's schedule the eps loss barely depends on the image at high noise
    (an x0 error costs SNR = abar / (1 - abar), 0.005 at t = 999), yet that is where the layout of a
    picture is decided; lower down the noisy latent already shows where things are. A teacher
    trained with eps alone learns colour and shape but draws objects wherever the noise puts them.
    """
    gen = torch.Generator().manual_seed(args.seed * 104729 + step + (stage == "layout") * 7_000_003)
    drop = torch.rand(args.batch, generator=gen) < args.caption_dropout
    latents, captions = latents_for_step(c, args, stage, step, gen, pool)
    captions = ["" if d else cap for d, cap in zip(drop.tolist(), captions)]
    abar = c.scheduler.alphas_cumprod
    noise = torch.randn(latents.shape, generator=gen)
    n = len(captions)
    t = torch.randint(0, len(abar), (n,), generator=gen)
    period = max(1, round(1 / args.layout_share)) if layout_weight > 0 else n + 1
    layout = torch.arange(n) % period == period - 1
    t = torch.where(layout, torch.randint(args.layout_min_t, len(abar), (n,), generator=gen), t)
    noisy = c.scheduler.add_noise(latents, noise, t)
    pred = c.unet(noisy, t, c.encode_prompts(captions)).sample
    parts = {"eps": F.mse_loss(pred[~layout], noise[~layout])}
    if layout.any():
        a = abar[t[layout]].view(-1, 1, 1, 1)
        x0 = (noisy[layout] - (1 - a).sqrt() * pred[layout]) / a.sqrt()
        parts["x0"] = F.mse_loss(x0, latents[layout])
    parts["loss"] = parts["eps"] + layout_weight * parts.get("x0", 0.0)
    return parts


def train_unet(c: C.Components, args, state: dict, work: Path, stage: str = "unet", pool: dict | None = None) -> None:
    """The UNet stage (from scratch, EMA) or the layout stage (fine-tuning the finished model)."""
    layout_stage = stage == "layout"
    steps, lr = (args.layout_steps, args.layout_lr) if layout_stage else (args.unet_steps, args.lr)
    layout_weight = (args.layout_weight or 1.0) if layout_stage else args.layout_weight
    unet, text = c.unet.train().requires_grad_(True), c.text_encoder.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text.parameters())
    # The side loss's head is trained with the model but not exported (and not averaged).
    head = side_loss.new_head(text.config.hidden_size, args.seed) if args.side_weight else None
    # fused: one kernel for all parameters, 19% faster a step on the 2-core CPU than the default
    opt = torch.optim.AdamW(params + (list(head.parameters()) if head else []), lr=lr, weight_decay=0.01, fused=True)
    ema = EMA(params, args.ema)
    if state.get("unet_opt"):
        opt.load_state_dict(state["unet_opt"])
        for s, saved in zip(ema.shadow, state["ema"]):
            s.copy_(saved)
        if head:
            head.load_state_dict(state["side_head"])
    start = state["step"]
    bar = tqdm(range(start, steps), desc="layout" if layout_stage else "UNet", initial=start, total=steps)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr * cosine_lr(step, steps, args.warmup // (4 if layout_stage else 1))
        weight = layout_weight if layout_stage or step >= args.layout_from else 0.0
        parts = diffusion_loss(c, args, stage, step, weight, pool)
        if head and (layout_stage or step >= args.side_from):
            prompts = side_loss.prompts_for_step(args.seed, step + 1_000_000 * layout_stage)
            parts["side"] = side_loss.side_loss(c, head, prompts)
            parts["loss"] = parts["loss"] + args.side_weight * parts["side"]
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        values = {k: v.item() for k, v in parts.items()}
        bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
        state["log"].append({"stage": stage, "step": step, **values})
        def save():
            state.update(step=step + 1, unet=unet.state_dict(), text_encoder=text.state_dict(),
                         unet_opt=opt.state_dict(), ema=[s.clone() for s in ema.shadow],
                         side_head=head.state_dict() if head else None)
            save_state(work, state)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            save()
        _maybe_stop(args, args.vae_steps + (args.unet_steps if layout_stage else 0), step, save)
    ema.copy_to(params)
    unet.eval().requires_grad_(False)
    text.eval().requires_grad_(False)
    state.update(stage="done", step=0, unet=unet.state_dict(), text_encoder=text.state_dict(), unet_opt=None,
                 layout_done=args.layout_steps if layout_stage else 0)
    save_state(work, state)


def load_vae(c: C.Components, state: dict) -> None:
    c.vae.load_state_dict(state["vae"])
    if state["stage"] != "vae":
        c.vae.register_to_config(scaling_factor=state["vae_config"]["scaling_factor"])


def state_with_vae_of(other_work: Path, settings: dict) -> dict:
    """A fresh run's state that starts at the UNet stage with the finished VAE of another run."""
    if not (other_work / STATE).exists():
        raise FileNotFoundError(f"--vae-from: {other_work / STATE} does not exist")
    other = torch.load(other_work / STATE, weights_only=False)
    if other["stage"] == "vae":
        raise ValueError(f"--vae-from: the VAE stage of {other_work} is not finished; resume that run first")
    changed = [k for k in VAE_SETTINGS if other["settings"].get(k) != settings[k]]
    if changed:
        raise ValueError(f"--vae-from: {other_work} trained its VAE with other settings ({', '.join(changed)}); "
                         "pass the same values or train the VAE here")
    return {"settings": settings, "stage": "unet", "step": 0, "vae": other["vae"], "vae_config": other["vae_config"],
            "log": [e for e in other["log"] if e["stage"] == "vae"], "seconds": 0.0, "vae_from": str(other_work)}


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    if args.export:
        fileio.check_output(args.export, args.overwrite)
    settings = {k: v for k, v in vars(args).items()
                if k not in ("resume", "export", "overwrite", "work", "stop_after", "vae_from", *LATE_SETTINGS)}
    # Checked before anything is written, so a refused --vae-from leaves no half-made run folder.
    borrowed = state_with_vae_of(Path(args.vae_from), settings) if args.vae_from and not args.resume else None
    work.mkdir(parents=True, exist_ok=True)
    # A resumed run keeps the tokenizer it was started with (its text encoder was trained on those ids).
    tokenizer_dir = work / "tokenizer"
    if not (args.resume and (tokenizer_dir / "vocab.json").is_file()):
        C.write_tokenizer(tokenizer_dir)
    c = C.new_components(args.seed, tokenizer_dir)
    if (work / STATE).exists() and not args.resume:
        raise FileExistsError(f"{work} already holds a training state; pass --resume to continue it "
                              "or choose another --work folder")
    if args.resume:
        if not (work / STATE).exists():
            raise FileNotFoundError(f"nothing to resume: {work / STATE} does not exist")
        state = torch.load(work / STATE, weights_only=False)
        fill_later_defaults(state["settings"], settings)
        if state["settings"] != settings:
            changed = [k for k in settings if state["settings"].get(k) != settings[k]]
            raise ValueError(f"cannot resume {work}: it was started with other settings ({', '.join(changed)})")
        load_vae(c, state)
        if state.get("unet"):
            c.unet.load_state_dict(state["unet"])
            c.text_encoder.load_state_dict(state["text_encoder"])
    elif borrowed:
        state = borrowed
        load_vae(c, state)
    else:
        state = {"settings": settings, "stage": "vae", "step": 0, "log": [], "vae": c.vae.state_dict(),
                 "seconds": 0.0}
    late = {k: getattr(args, k) for k in LATE_SETTINGS}
    # Layout settings shape every stage still to run; only a finished run may take new ones.
    fill_later_defaults(state.setdefault("late_settings", late), late)
    if state["stage"] != "done" and state["late_settings"] != late:
        raise ValueError(f"cannot resume {work}: its {state['stage']} stage was started with other settings "
                         f"({state['late_settings']})")
    started = time.time()
    try:
        if state["stage"] == "vae":
            train_vae(c, args, state, work)
        # Built once for both diffusion stages (deterministic, so a resumed run gets the same pool).
        diffusion_to_do = state["stage"] != "done" or args.layout_steps > state.get("layout_done", 0)
        pool = build_latent_pool(c, args) if args.latent_pool and diffusion_to_do else None
        if state["stage"] == "unet":
            train_unet(c, args, state, work, pool=pool)
        if state["stage"] == "done" and args.layout_steps > state.get("layout_done", 0):
            state.update(stage="layout", step=0, late_settings=late, unet_opt=None)
        if state["stage"] == "layout":
            train_unet(c, args, state, work, stage="layout", pool=pool)
    except Interrupted:
        state["seconds"] += time.time() - started
        save_state(work, state)
        print(f"stopped after step {args.stop_after}; continue with --resume")
        return 0
    state["seconds"] += time.time() - started
    save_state(work, state)
    (work / "log.json").write_text(json.dumps({"seconds": state["seconds"], "log": state["log"]}))
    if args.export:
        with fileio.atomic_dir(args.export, args.overwrite) as tmp:
            C.save_model_folder(c, tmp)
        print(f"exported the model to {args.export} (training took {state['seconds'] / 60:.1f} min in total)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
