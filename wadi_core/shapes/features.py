"""The domain feature network for FID in the shapes world.

A small CNN trained on renders to name what a scene contains (colours, shapes, position, size,
relation); its 128-d penultimate layer is the feature space of the domain FID, as Inception's
pool layer is for photographs. Trained with mild blur and noise so that the features change
smoothly with the artefacts of generated images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, parse_prompt

WEIGHTS = Path(__file__).resolve().parent / "features.safetensors"
FEATURES = 128
HEADS = {  # label -> number of classes ("none" last where a second object may be absent)
    "color1": len(COLORS), "shape1": len(SHAPES), "cell1": len(POSITIONS), "size1": len(SIZES),
    "color2": len(COLORS) + 1, "shape2": len(SHAPES) + 1, "relation": len(RELATIONS) + 1,
}


class FeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        def block(i, o, stride):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.SiLU())
        self.body = nn.Sequential(block(3, 32, 1), block(32, 64, 2), block(64, 64, 1), block(64, 128, 2),
                                  block(128, 128, 1))
        self.embed = nn.Linear(128 * 8 * 8, FEATURES)
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES, n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, 3, 32, 32]`` images in [-1, 1] -> ``[n, 128]`` features."""
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        return self.embed(self.body(x).flatten(1))

    def logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.silu(self(x))
        return {name: head(h) for name, head in self.heads.items()}


_INVERSE = {"right of": "left of", "below": "above"}


def labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Class targets of each scene. "B right of A" shows the same picture as "A left of B", so
    relations are canonicalised to left of / above, with the objects in that order."""
    colors, shapes, cells, sizes = list(COLORS), list(SHAPES), list(POSITIONS.values()), list(SIZES)
    out = {name: [] for name in HEADS}
    for scene in scenes:
        a = scene.shapes[0]
        relation = parse_prompt(scene.caption).relation if len(scene.shapes) > 1 else None
        if relation in _INVERSE:
            a, relation = scene.shapes[1], _INVERSE[relation]
        out["color1"].append(colors.index(a.color))
        out["shape1"].append(shapes.index(a.kind))
        out["cell1"].append(cells.index((min(2, int(a.cx * 3 / 32)), min(2, int(a.cy * 3 / 32)))))
        out["size1"].append(sizes.index(a.size))
        if relation:
            b = scene.shapes[0] if a is scene.shapes[1] else scene.shapes[1]
            out["color2"].append(colors.index(b.color))
            out["shape2"].append(shapes.index(b.kind))
            out["relation"].append(list(RELATIONS).index(relation))
        else:
            out["color2"].append(len(colors))
            out["shape2"].append(len(shapes))
            out["relation"].append(len(RELATIONS))
    return {k: torch.tensor(v) for k, v in out.items()}


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random mild blur and noise (images in [-1, 1])."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=generator) * 1.0
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernels = torch.exp(-k[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)
    out = images
    for dim in (2, 3):  # separable blur, a different strength per image
        shape = (n * 3, 1, 5, 1) if dim == 2 else (n * 3, 1, 1, 5)
        weight = kernels.repeat_interleave(3, 0).reshape(shape)
        padded = F.pad(out.reshape(1, n * 3, 32, 32), (0, 0, 2, 2) if dim == 2 else (2, 2, 0, 0), mode="replicate")
        out = F.conv2d(padded, weight, groups=n * 3).reshape(n, 3, 32, 32)
    noise = torch.randn(images.shape, generator=generator) * (torch.rand(n, 1, 1, 1, generator=generator) * 0.1)
    return (out + noise).clamp(-1, 1)


def load_feature_net(path: str | os.PathLike = WEIGHTS) -> FeatureNet:
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the shapes feature network {path} is missing; run "
                                "`python -m wadi_core.shapes.train_features` to make it")
    net = FeatureNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})  # stored as fp16
    return net.eval().requires_grad_(False)


