"""The paper's weight analysis (its Fig. 1) for any two checkpoints of one architecture.

Per layer: how much the rows of the weight changed in norm and in direction, and whether the
change of direction is low-rank (the SVD of the difference of the normalised rows). And the swap
ablation's networks: OTHER with BASE's row norms, and OTHER with BASE's row directions.
Weights are streamed from the files one layer at a time (see ``weight_sources``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .sources import WeightSource, check_same_architecture

DEFINITIONS = {
    "norm_change": "relative change of a row's norm, | ||w'|| - ||w|| | / ||w||",
    "direction_change": "angle between a row and its counterpart, arccos(cos(w, w')), in radians; a rotation by "
                        "this angle moves the row by about angle * ||w||, as a norm change d moves it by d * ||w||, "
                        "so the two are on one scale",
    "one_minus_cos": "1 - cos(w, w') of a row",
    "ratio": "direction change / norm change (layer means)",
    "isotropic_ratio": "the ratio a change of the same size in a random direction would give: a random step in d "
                       "dimensions is mostly orthogonal to the row, so it turns the row ~sqrt(pi d / 2) times more "
                       "than it changes its norm. A measured ratio far above this means the norms were kept on "
                       "purpose; near it, the update simply ignores the norm/direction split",
    "residual": "normalised rows of OTHER minus normalised rows of BASE; its SVD tells whether the change of "
                "direction is low-rank",
    "rank_fraction_for_energy": "smallest share of the residual's rank whose top singular values keep 93% of its "
                                "energy (squared Frobenius norm), the paper's Fig. 1b threshold",
    "random_energy_curve": "the same curve for a Gaussian random matrix of the layer's shape: what 'no low-rank "
                           "structure' looks like",
}
ENERGY = 0.93
RANK_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 21))


@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    norm_mean: float
    norm_std: float
    direction_mean: float
    direction_std: float
    one_minus_cos_mean: float
    ratio: float
    isotropic_ratio: float
    changed: bool
    rank_fraction_for_energy: float  # 0 for an unchanged layer
    energy_at_30_percent_rank: float
    energy_curve: list[float] = field(default_factory=list)  # energy kept at each of RANK_FRACTIONS


def analysed_layers(source: WeightSource, convs: bool = False) -> list[str]:
    """Weights of Linear layers (and 1x1 convolutions, which are Linear layers in SD1.x), and of all
    convolutions (rows flattened) when ``convs``."""
    def wanted(shape) -> bool:
        return len(shape) == 2 or (len(shape) == 4 and (convs or tuple(shape[2:]) == (1, 1)))
    return [n for n, s in source.shapes.items() if n.endswith(".weight") and wanted(s)]


def isotropic_ratio(row_size: int) -> float:
    """E||tangential|| / E|radial| of a Gaussian step in ``row_size`` dimensions (exact, Gamma functions)."""
    if row_size < 2:
        return 0.0
    tangential = math.sqrt(2) * math.exp(math.lgamma(row_size / 2) - math.lgamma((row_size - 1) / 2))
    return tangential / math.sqrt(2 / math.pi)


def row_changes(base: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(relative norm change, 1 - cosine)`` of two weights of the same shape (rows = outputs)."""
    if base.shape != other.shape:
        raise ValueError(f"weights of shape {tuple(base.shape)} and {tuple(other.shape)} cannot be compared")
    a = base.reshape(base.shape[0], -1).double()
    b = other.reshape(other.shape[0], -1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    safe = na.clamp(min=1e-12)
    norm = (nb - na).abs() / safe
    cosine = (a * b).sum(1) / (safe * nb.clamp(min=1e-12))
    return norm, 1 - cosine.clamp(-1, 1)


def energy_curve(residual: torch.Tensor) -> tuple[float, list[float], float]:
    """``(rank fraction keeping ENERGY, energy at each RANK_FRACTIONS, energy at 30% rank)`` of a residual."""
    singular = torch.linalg.svdvals(residual.float())
    energy = singular.double().square()
    total = energy.sum().item()
    full_rank = singular.numel()
    if total == 0.0:
        return 0.0, [1.0] * len(RANK_FRACTIONS), 1.0
    cumulative = (energy.cumsum(0) / total).tolist()

    def kept(fraction: float) -> float:
        k = max(1, math.ceil(fraction * full_rank - 1e-9))
        return cumulative[min(k, full_rank) - 1]

    needed = next(i + 1 for i, c in enumerate(cumulative) if c >= ENERGY - 1e-12)
    return needed / full_rank, [kept(f) for f in RANK_FRACTIONS], kept(0.3)


def random_energy_curve(shape: tuple[int, ...], seed: int = 0) -> list[float]:
    """Energy kept at each of RANK_FRACTIONS by a Gaussian matrix of ``shape`` (no structure)."""
    generator = torch.Generator().manual_seed(seed)
    rows = shape[0]
    matrix = torch.randn(rows, math.prod(shape) // rows, generator=generator)
    return energy_curve(matrix)[1]


def residual(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Normalised rows of ``other`` minus normalised rows of ``base`` (``[out, in*k*k]``)."""
    a = base.reshape(base.shape[0], -1).double()
    b = other.reshape(other.shape[0], -1).double()
    return b / b.norm(dim=1, keepdim=True).clamp(min=1e-12) - a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)


def layer_stats(name: str, base: torch.Tensor, other: torch.Tensor) -> LayerStats:
    changed = bool((base != other).any())
    norm, one_minus_cos = row_changes(base, other)
    if not changed:  # exact zeros, not the rounding noise of arccos(1 - 0)
        norm, one_minus_cos = torch.zeros_like(norm), torch.zeros_like(one_minus_cos)
    angle = torch.arccos((1 - one_minus_cos).clamp(-1, 1))
    rank_fraction, curve, at_30 = energy_curve(residual(base, other)) if changed else \
        (0.0, [1.0] * len(RANK_FRACTIONS), 1.0)
    norm_mean, direction_mean = norm.mean().item(), angle.mean().item()
    return LayerStats(name, tuple(base.shape), norm_mean, norm.std(unbiased=False).item(), direction_mean,
                      angle.std(unbiased=False).item(), one_minus_cos.mean().item(),
                      direction_mean / norm_mean if norm_mean > 0 else (math.inf if direction_mean > 0 else 0.0),
                      isotropic_ratio(math.prod(base.shape[1:])), changed, rank_fraction, at_30, curve)


def analyse(base: WeightSource, other: WeightSource, convs: bool = False, progress: bool = True) -> list[LayerStats]:
    """:class:`LayerStats` of every analysed layer; refuses models of different architectures."""
    check_same_architecture(base, other)
    names = analysed_layers(base, convs)
    if not names:
        raise ValueError(f"{base.label} has no Linear layers to analyse" + ("" if convs else "; try --convs"))
    out = []
    for name in tqdm(names, desc="analysing layers", unit="layer", disable=not progress):
        a, b = base.read(name), other.read(name)
        out.append(layer_stats(name[: -len(".weight")], a, b))
    return out


def summary(layers: list[LayerStats]) -> dict:
    """Means over layers (the paper's 'all-layer mean'), and the SVD numbers over changed layers."""
    changed = [layer for layer in layers if layer.changed]
    norm = float(np.mean([layer.norm_mean for layer in layers]))
    direction = float(np.mean([layer.direction_mean for layer in layers]))
    result = {
        "layers": len(layers), "changed_layers": len(changed),
        "norm_change_mean": norm, "norm_change_std": float(np.mean([layer.norm_std for layer in layers])),
        "direction_change_mean": direction,
        "direction_change_std": float(np.mean([layer.direction_std for layer in layers])),
        "one_minus_cos_mean": float(np.mean([layer.one_minus_cos_mean for layer in layers])),
        "direction_over_norm": direction / norm if norm > 0 else (math.inf if direction > 0 else 0.0),
        "isotropic_ratio_mean": float(np.mean([layer.isotropic_ratio for layer in layers])),
        "layers_direction_exceeds_norm": sum(layer.direction_mean > layer.norm_mean for layer in layers),
    }
    if changed:
        result.update({
            "energy_threshold": ENERGY,
            "rank_fraction_for_energy_mean": float(np.mean([layer.rank_fraction_for_energy for layer in changed])),
            "energy_at_30_percent_rank_mean": float(np.mean([layer.energy_at_30_percent_rank for layer in changed])),
            "energy_curve_mean": dict(zip(map(str, RANK_FRACTIONS),
                                          np.mean([layer.energy_curve for layer in changed], axis=0).tolist())),
        })
    return result


def as_rows(layers: list[LayerStats]) -> list[dict]:
    """One flat dict per layer (for the CSV)."""
    rows = []
    for layer in layers:
        row = asdict(layer)
        row["shape"] = "x".join(map(str, layer.shape))
        row.pop("energy_curve")
        rows.append(row)
    return rows


SWAPS = {
    "base-norms": "OTHER's row directions with BASE's row norms",
    "base-directions": "OTHER's row norms with BASE's row directions",
}


def swapped_weight(base: torch.Tensor, other: torch.Tensor, swap: str) -> torch.Tensor:
    """One weight of a swap model: rows of one side rescaled to the norms of the other."""
    a = base.reshape(base.shape[0], -1).double()
    b = other.reshape(other.shape[0], -1).double()
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    if swap == "base-norms":
        rows = b / nb.clamp(min=1e-12) * na
    elif swap == "base-directions":
        rows = a / na.clamp(min=1e-12) * nb
    else:
        raise ValueError(f"unknown swap '{swap}'; choose one of: {', '.join(SWAPS)}")
    return rows.reshape(other.shape).to(torch.float32)


def model_state(base: WeightSource, other: WeightSource, swap: str | None, layers: list[str],
                progress: bool = False) -> dict[str, torch.Tensor]:
    """The whole backbone state of OTHER (``swap=None``) or of a swap model; the swap touches only
    ``layers`` (weight names), every other tensor is OTHER's."""
    chosen = set(layers)
    state = {}
    for name in tqdm(list(other.shapes), desc=f"building {swap or 'model'}", unit="tensor", disable=not progress):
        tensor = other.read(name).float()
        if swap is not None and name in chosen:
            tensor = swapped_weight(base.read(name), tensor, swap)
        state[name] = tensor
    return state
