"""Evaluate a generator on prompts: prompt accuracy (the shapes judge), domain FID against
renders of the same prompts, k-NN precision/recall, and speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .images import read_image_folder
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
                    reference: np.ndarray | None = None, clip_dir=None) -> dict:
    """Metrics of generated ``images`` for ``prompts``.

    In the shapes world the judge gives prompt accuracy and the shipped feature net a domain FID
    against renders of the same prompts. Elsewhere FID needs a ``feature_net`` and ``reference``
    images from the user, and CLIP score a CLIP folder (``clip_dir``).
    """
    result = {"prompt_accuracy": accuracy_report(images, prompts)}
    shapes_world = judgeable(prompts)
    if reference is not None or shapes_world:
        net = feature_net or load_feature_net()
        real = reference if reference is not None else reference_renders(prompts, seed)
        f_real, f_fake = metrics.features(net, real), metrics.features(net, images)
        result["fid"] = metrics.frechet_distance(f_real, f_fake)
        result.update(metrics.precision_recall(f_real, f_fake, k=3))
    if clip_dir is not None:
        result["clip_score"] = metrics.clip_score(images, prompts, clip_dir)
    return result


@dataclass(frozen=True)
class Metrics:
    """What FID and CLIP score are measured with on real models: a feature network (a ``torch.export`` .pt2, e.g. an
    Inception), a folder of real images, a CLIP folder. Empty: the shapes world's own feature net and renders."""

    fid_features: str | None = None
    reference: str | None = None
    clip: str | None = None

    def inputs(self, components) -> tuple[object, np.ndarray | None]:
        """``(feature network or None, reference images or None)``."""
        from .metrics import load_feature_network
        from .sampling import image_size

        net = load_feature_network(self.fid_features) if self.fid_features else None
        reference = load_image_folder(self.reference, image_size(components)) if self.reference else None
        return net, reference

    def measure(self, images: np.ndarray, prompts: Sequence[str], seed: int, inputs) -> dict:
        return evaluate_images(images, prompts, seed, inputs[0], inputs[1], self.clip)


def summary_line(name: str, result: dict) -> str:
    """One line of a result: the attribute accuracies, FID, CLIP score and speed it has."""
    acc = result["prompt_accuracy"]
    parts = [f"{name}:"]
    for key in ("single/color", "single/shape", "single/size", "single/position", "relation/axis", "relation/relation",
                "all"):
        if key in acc:
            parts.append(f"{key} {acc[key]:.1%}")
    if "fid" in result:
        parts.append(f"FID {result['fid']:.2f}")
    if "clip_score" in result:
        parts.append(f"CLIP score {result['clip_score']:.2f}")
    if "images_per_second" in result:
        parts.append(f"{result['images_per_second']:.1f} img/s")
    return "  ".join(parts)


def load_image_folder(folder, size: int) -> np.ndarray:
    """Every PNG/JPEG in ``folder`` as ``uint8 [n, size, size, 3]`` (centre-cropped and resized)."""
    return read_image_folder(folder, size, min_count=2)[1]


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


def evaluate_generator(generator, sampler, prompts: Sequence[str], seed: int = 0, progress: bool = False,
                       warm_up: bool = False) -> tuple[dict, np.ndarray]:
    """Metrics, speed and images of ``generator`` drawing ``prompts`` (seeds ``seed + i``) with ``sampler``;
    ``warm_up`` draws 8 images first, untimed (a LoRaD student builds its rotated weights on its first call)."""
    seeds = [seed + i for i in range(len(prompts))]
    if warm_up:
        generator(prompts[:8], seeds[:8], sampler)
    images, seconds = timed(lambda: generator(prompts, seeds, sampler, progress))
    return dict(evaluate_images(images, prompts, seed), seconds=seconds,
                images_per_second=len(prompts) / seconds), images


def evaluate_teacher(model_dir, prompts: Sequence[str], seed: int = 0, steps: int = 25, guidance: float = 3.0,
                     progress: bool = False, device=None) -> tuple[dict, np.ndarray]:
    """Metrics and images of a model sampled with ``steps`` DDIM steps and CFG (on ``device``: see
    :func:`wadi_core.sampling.build_generator`)."""
    from .sampling import MultiStep, build_generator
    return evaluate_generator(build_generator(model_dir, device=device), MultiStep(steps, guidance), prompts, seed,
                              progress)


def evaluate_student(model_dir, adapter, prompts: Sequence[str], seed: int = 0,
                     progress: bool = False, device=None) -> tuple[dict, np.ndarray]:
    """Metrics and images of one-step sampling with a student adapter on ``model_dir``."""
    from .sampling import OneStep, build_generator
    return evaluate_generator(build_generator(model_dir, [(adapter, 1.0)], device=device), OneStep(), prompts, seed,
                              progress, warm_up=True)


def evaluate_model(generator, sampler, prompts: Sequence[str], seed: int = 0, metrics: Metrics = Metrics(),
                   floor: bool = False, untrained: bool = False, progress: bool = False,
                   report: Callable[[str], None] = lambda text: None) -> tuple[dict, np.ndarray]:
    """``wadi eval``: metrics and speed of ``generator`` drawing ``prompts`` (seeds ``seed + i``) with ``sampler``,
    optionally with the FID of a second set of renders (``floor``) and of the same architecture untrained (the
    ceiling, sampled alike); returns the report and the images."""
    components = generator.components
    seeds = [seed + i for i in range(len(prompts))]
    inputs = metrics.inputs(components)
    images, seconds = timed(lambda: generator(prompts, seeds, sampler, progress))
    result = {"model_result": dict(metrics.measure(images, prompts, seed, inputs), seconds=seconds,
                                   images_per_second=len(prompts) / seconds)}
    report(summary_line("model", result["model_result"]))
    if floor:
        result["render_floor_fid"] = render_floor(prompts, seed)
        report(f"renders vs renders (floor): FID {result['render_floor_fid']:.2f}")
    if untrained:
        import dataclasses

        import torch
        torch.manual_seed(seed)
        blank = type(components.unet).from_config(components.unet.config).eval().to(components.unet.device)
        drawn = sampler(dataclasses.replace(components, unet=blank), prompts, seeds, progress)
        result["untrained_result"] = metrics.measure(drawn, prompts, seed, inputs)
        report(summary_line("untrained UNet (ceiling)", result["untrained_result"]))
    return result, images
