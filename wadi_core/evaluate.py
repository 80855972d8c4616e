"""Evaluate a generator on prompts: prompt accuracy (the shapes judge), domain FID against
renders of the same prompts, k-NN precision/recall, and speed."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .shapes import accuracy_report, parse_prompt, render_batch, scene_for_prompt
from .shapes.features import load_feature_net
from .shapes.world import NotJudgeable


def reference_renders(prompts: Sequence[str], seed: int) -> np.ndarray:
    """Fresh renders of the prompts (the 'real' images of the shapes world)."""
    rng = np.random.default_rng([seed, 7])
    return render_batch([scene_for_prompt(parse_prompt(p), rng) for p in prompts])


def judgeable(prompts: Sequence[str]) -> bool:
    try:
        for p in prompts:
            parse_prompt(p)
    except NotJudgeable:
        return False
    return True


def evaluate_images(images: np.ndarray, prompts: Sequence[str], seed: int = 0, feature_net=None,
                    reference: np.ndarray | None = None) -> dict:
    """Metrics of generated ``images`` for ``prompts`` (shapes world)."""
    result = {"prompt_accuracy": accuracy_report(images, prompts)}
    if judgeable(prompts):
        net = feature_net or load_feature_net()
        real = reference if reference is not None else reference_renders(prompts, seed)
        f_real, f_fake = metrics.features(net, real), metrics.features(net, images)
        result["fid"] = metrics.frechet_distance(f_real, f_fake)
        result.update(metrics.precision_recall(f_real, f_fake, k=3))
    return result


def timed(generate: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    images = generate()
    return images, time.perf_counter() - start


def render_floor(prompts: Sequence[str], seed: int, feature_net=None) -> float:
    """FID between two independent render sets of the same prompts: the best a model can get."""
    net = feature_net or load_feature_net()
    a = metrics.features(net, reference_renders(prompts, seed))
    b = metrics.features(net, reference_renders(prompts, seed + 1))
    return metrics.frechet_distance(a, b)
