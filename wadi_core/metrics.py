"""Sample-quality metrics that take their networks from the caller (nothing is downloaded).

- :func:`frechet_distance` between two feature sets (the FID formula), with
  :func:`features` to run any ``nn.Module`` (the shapes feature net, an Inception network the
  user supplies through :func:`load_feature_network`, ...) over uint8 images;
- :func:`precision_recall`: k-nearest-neighbour precision and recall (Kynkaanniemi et al. 2019);
- :func:`clip_score`: 100 * mean cosine similarity of image and prompt with CLIP weights the user
  supplies (a transformers ``CLIPModel`` folder).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch


@torch.no_grad()
def features(module: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, batch_size: int = 256,
             input_range: str = "minus_one_one") -> torch.Tensor:
    """Run ``module`` over ``uint8 [n, H, W, 3]`` images (NCHW float input), float64 features."""
    if len(images) == 0:
        raise ValueError("no images to compute features of")
    from .images import to_tensor
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start:start + batch_size])  # [-1, 1]
        x = (x + 1) / 2 if input_range == "zero_one" else (x + 1) * 127.5 if input_range == "uint8" else x
        out.append(module(x).flatten(1).double())
    return torch.cat(out)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two ``[n, d]`` feature sets.

    ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S_a S_b``,
    which are real and non-negative for covariance matrices (tiny negative rounding is clipped).
    """
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Frechet distance needs at least two samples on each side")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eig = torch.linalg.eigvals(cov_a @ cov_b).real.clamp(min=0)
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * eig.sqrt().sum()
    return float(value.clamp(min=0))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Share of fake samples inside the real manifold (precision) and the reverse (recall)."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)  # [fake, real]
    precision = (d <= r_real[None, :]).any(1).double().mean()
    recall = (d.T <= r_fake[None, :]).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


@torch.no_grad()
def clip_score(images: np.ndarray, prompts: Sequence[str], clip_dir: str | os.PathLike, batch_size: int = 64) -> float:
    """CLIP score with the user's CLIP weights (a folder loadable by ``CLIPModel.from_pretrained``)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    processor = CLIPImageProcessor.from_pretrained(str(clip_dir))
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    scores = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start:start + batch_size]), return_tensors="pt").pixel_values
        text = tokenizer(list(prompts[start:start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(**text)
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        scores.append(torch.nn.functional.cosine_similarity(img, txt).clamp(min=0))
    return float(100 * torch.cat(scores).mean())


def load_feature_network(path: str | os.PathLike) -> torch.nn.Module:
    """A feature network the user supplies (e.g. an Inception for COCO FID), saved with
    ``torch.export.save`` (.pt2) or, for older exports, ``torch.jit.save`` (.pt)."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network {path} does not exist; give a .pt2 (torch.export) file")
    if path.suffix == ".pt2":
        try:
            return torch.export.load(str(path)).module()
        except Exception as err:
            raise ValueError(f"{path} is not a saved torch.export program ({err})") from None
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:
        raise ValueError(f"{path} is not a TorchScript module ({err}); save your network with torch.export") from None


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
