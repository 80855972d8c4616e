"""Train the shapes world's feature network (for the domain FID) on renders.

    python -m wadi_core.shapes.train_features --out wadi_core/shapes/features.safetensors
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wadi_core import fileio
from wadi_core.shapes.dataset import render_batch, sample_scenes
from wadi_core.images import to_tensor
from wadi_core.shapes.features import FeatureNet, degrade, labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    fileio.check_output(args.out, args.overwrite)
    torch.manual_seed(args.seed)
    net = FeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.time()
    bar = tqdm(range(args.steps), desc="feature net")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = args.lr * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * torch.pi)).item())
        scenes = sample_scenes(args.batch, "train", seed=args.seed * 7_000_003 + step)
        x = degrade(to_tensor(render_batch(scenes)), gen)
        target = labels(scenes)
        out = net.logits(x)
        loss = sum(F.cross_entropy(out[k], target[k]) for k in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    scenes = sample_scenes(1000, "heldout", seed=args.seed + 99)
    with torch.no_grad():
        out = net.logits(to_tensor(render_batch(scenes)))
    target = labels(scenes)
    accuracy = {k: float((out[k].argmax(1) == target[k]).float().mean()) for k in out}
    print("held-out accuracy per head:", {k: round(v, 3) for k, v in accuracy.items()})
    fileio.save_safetensors({k: v.half() for k, v in net.state_dict().items()}, args.out, {"wadi.kind": "shapes-features",
                                                          "wadi.steps": str(args.steps)}, args.overwrite)
    print(f"wrote {args.out} in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
