"""Recover a LoRaD adapter from a merged model (the authors' released one-step UNets, or any fine-tune of a base),
and convert the authors' angle files (``kduv.pth``) into our adapter format.

A LoRaD layer changes a weight only by rotating each pair of input entries ``(W[:, 2j], W[:, 2j+1])`` of every
row, so the rotation can be read back exactly: the angle of a pair is ``atan2(cross, dot)`` of its base and
merged values, once its norm is seen to be kept. The angle matrix of a layer is then fitted by ``up @ down`` at
a rank (the paper's, a given one, or the smallest that reaches an error), and the error that fit makes on the
*weights* is measured and reported. Whatever did not change by a rotation (a bias, a norm, a convolution, a
Linear whose pair norms moved) is listed with its size; it is written as a separate additive file on request,
so that nothing is silently lost.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import fileio
from .lorad import functional as LF
from .lorad.io import DOWN, PREFIXES, UP, AdapterError, adapter_metadata, encode_name
from .models.checkpoint import Checkpoint, CheckpointError, check_same_tensors, open_checkpoint

TOLERANCE_ULPS = 8  # a kept pair norm may differ by this many units in the last place of the merged file's dtype
AUTO_ERROR = 1e-3  # --rank auto: the smallest rank whose weights are within this relative error


@dataclass
class LayerFit:
    name: str
    rank: int
    weight_error: float  # ||W(fit) - W(merged)|| / ||W(merged)||
    max_angle: float  # largest |theta| read back, radians


@dataclass
class Extraction:
    path: Path
    layers: list[LayerFit]
    parameters: int
    file_bytes: int
    weight_error: float  # over every rotated layer, relative to their merged weights
    norm_tolerance: float  # relative, for the merged file's dtype
    residual: list[tuple[str, float]] = field(default_factory=list)  # (tensor, ||change|| / ||base||)
    residual_path: Path | None = None
    explained: float = 1.0  # the share of the squared change that the rotations explain

    @property
    def rank(self) -> int:
        return max((layer.rank for layer in self.layers), default=0)

    @property
    def worst(self) -> LayerFit:
        return max(self.layers, key=lambda layer: layer.weight_error)


def pair_angles(base: torch.Tensor, merged: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, bool]:
    """``(theta [out, in//2], kept)``: the rotation angle of every input pair from ``base`` to ``merged`` and
    whether every pair kept its norm (within ``tolerance`` relative, floored at that share of the layer's
    largest pair) and an odd last column stayed. In float64."""
    b, m = base.double().reshape(base.shape[0], -1), merged.double().reshape(merged.shape[0], -1)
    half = b.shape[1] // 2
    be, bo, me, mo = b[:, 0:2 * half:2], b[:, 1:2 * half:2], m[:, 0:2 * half:2], m[:, 1:2 * half:2]
    theta = torch.atan2(be * mo - bo * me, be * me + bo * mo)
    rb, rm = torch.hypot(be, bo), torch.hypot(me, mo)
    floor = tolerance * float(rb.max()) if rb.numel() else 0.0
    kept = bool(((rm - rb).abs() <= tolerance * rb + floor).all())
    if b.shape[1] % 2:
        kept = kept and bool(((m[:, -1] - b[:, -1]).abs() <= tolerance * b[:, -1].abs() + floor).all())
    return theta, kept


def low_rank(theta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up [out, r], down [r, in//2])``, the best rank-``rank`` factorisation of ``theta`` (truncated SVD; a
    randomised one with oversampling when the rank is small against the matrix, as for SD-size layers)."""
    u, s, vh = LF.truncated_svd(theta, rank)
    root = s.sqrt()
    return u * root, root[:, None] * vh


def weight_error(base: torch.Tensor, merged: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    fit = LF.rotate_by_angles(base.double(), up.double() @ down.double())
    return float((fit - merged.double()).norm() / merged.double().norm().clamp(min=1e-30))


def fit_layer(base: torch.Tensor, merged: torch.Tensor, theta: torch.Tensor, rank: int | str,
              max_error: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Factors of the layer's angles at ``rank``, or with ``"auto"`` at the smallest rank whose weight error is
    within ``max_error`` (a binary search over the SVD's prefix); returns ``(up, down, weight error)``."""
    full = min(theta.shape)
    if rank != "auto":
        up, down = low_rank(theta, int(rank))
        return up, down, weight_error(base, merged, up, down)
    low, high = 1, full
    best = low_rank(theta, full)
    best = (*best, weight_error(base, merged, *best))
    while low < high:
        mid = (low + high) // 2
        up, down = low_rank(theta, mid)
        error = weight_error(base, merged, up, down)
        if error <= max_error:
            best, high = (up, down, error), mid
        else:
            low = mid + 1
    return best


def default_rank(family: str) -> int:
    """The paper's student rank for the family (SD1.x/2.x 256, PixArt-alpha 128)."""
    from .lorad.presets import PRESETS
    preset = {"sd15": "unet-student", "sd21": "unet-student", "pixart-alpha": "dit-student"}.get(family)
    if preset is None:
        raise ValueError(f"the base's family is '{family}', which has no paper rank; give --rank R or --rank auto")
    return PRESETS[preset].paper_rank


def extract(base: str | os.PathLike | Checkpoint, merged: str | os.PathLike, out: str | os.PathLike,
            rank: int | str | None = None, max_error: float = AUTO_ERROR, allow_residual: bool = False,
            overwrite: bool = False, progress: bool = True,
            on_layer: Callable[[int, int], None] | None = None, dtype: torch.dtype = torch.float32) -> Extraction:
    """Recover the LoRaD adapter that turns ``base`` into ``merged`` (a whole-backbone state dict such as the
    authors' released files, or any checkpoint of the same architecture) and write it to ``out``.

    ``rank``: an integer, ``"auto"`` (per layer, the smallest within ``max_error`` on its weights) or None
    (the paper's rank for the family). What did not change by a rotation is refused, naming the tensors, unless
    ``allow_residual``, which writes it to ``OUT.residual.safetensors`` (``merged - base`` of those tensors).
    ``dtype`` of the factors in the file (float32, or float16 / bfloat16 for half the size; the reported errors
    are those of the factors as stored)."""
    out = Path(out)
    base_ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    merged_ckpt = open_checkpoint(merged)
    fileio.refuse_same_path(out, [("--model", base_ckpt.path), ("--merged", merged)])
    check_same_tensors(base_ckpt.shapes, merged_ckpt.shapes, f"the merged model {merged}",
                       f"the {base_ckpt.backbone} of {base_ckpt.label}")
    rank = default_rank(base_ckpt.family) if rank is None else rank
    if rank != "auto" and (isinstance(rank, bool) or int(rank) < 1):
        raise ValueError(f"--rank must be a positive whole number or 'auto', not {rank!r}")
    residual_path = out.with_name(out.stem + ".residual.safetensors")
    with fileio.claim(out, overwrite), (fileio.claim(residual_path, overwrite) if allow_residual else nullcontext()):
        fits, residual, factors, explained = _fit_all(base_ckpt, merged_ckpt, rank, max_error, progress, on_layer,
                                                      dtype)
        if residual and not allow_residual:
            listed = ", ".join(f"{name} ({size:.2%})" for name, size in residual[:5])
            raise AdapterError(
                f"{merged} differs from {base_ckpt.label} by more than rotations in {len(residual)} tensors: "
                f"{listed}{' ...' if len(residual) > 5 else ''}; rotations explain {explained:.1%} of the change. "
                "Pass --allow-residual to write the rest as a separate additive file, or compare the two with "
                f"wadi analyze --model {base_ckpt.path} --compare {merged}")
        if not factors:
            raise AdapterError(f"{merged} rotates no layer of {base_ckpt.label}; there is no LoRaD adapter in it")
        prefix = PREFIXES[base_ckpt.backbone]
        tensors = {}
        for layer, (up, down) in factors.items():
            key = encode_name(prefix, layer)
            tensors[f"{key}.{UP}"], tensors[f"{key}.{DOWN}"] = up.to(dtype), down.to(dtype)
        meta = adapter_metadata(base_ckpt.family, max(f.rank for f in fits), "custom", prefix, len(factors),
                                {"wadi.extracted_from": str(merged), "wadi.extract_weight_error": f"{_overall(fits):.3e}"})
        fileio.save_safetensors(tensors, out, meta, overwrite)
        written = None
        if residual and allow_residual:
            written = fileio.save_safetensors(
                {name: (merged_ckpt.read(name).double() - base_ckpt.read(name).double()).float() for name, _ in residual},
                residual_path, {"wadi.format": "residual", "wadi.base": base_ckpt.family,
                                "wadi.note": "merged - base of the tensors no rotation explains; add to the merge"},
                overwrite)
    return Extraction(out, fits, sum(t.numel() for t in tensors.values()), out.stat().st_size, _overall(fits),
                      tolerance_of(merged_ckpt), residual, written, explained)


def tolerance_of(ckpt: Checkpoint) -> float:
    """The relative pair-norm tolerance for the merged file's weights: ``TOLERANCE_ULPS`` of its float type."""
    dtypes = {ckpt.read(name).dtype for name in list(ckpt.shapes)[:4]}
    eps = max(torch.finfo(d).eps for d in dtypes if d.is_floating_point)
    return TOLERANCE_ULPS * eps


def _fit_all(base: Checkpoint, merged: Checkpoint, rank, max_error, progress, on_layer, dtype=torch.float32):
    tolerance = tolerance_of(merged)
    fits, residual, factors = [], [], {}
    changed_sq = unexplained_sq = 0.0
    names = list(base.shapes)
    for done, name in enumerate(tqdm(names, desc="extract", unit="tensor", disable=not progress)):
        if on_layer is not None:
            on_layer(done, len(names))
        b, m = base.read(name), merged.read(name)
        if m.is_floating_point() and not bool(torch.isfinite(m).all()):
            raise CheckpointError(f"the merged model's '{name}' holds NaN or Inf values; the file is damaged")
        if torch.equal(b, m.to(b.dtype)) or torch.equal(b.to(m.dtype), m):
            continue
        change = float((m.double() - b.double()).norm())
        changed_sq += change ** 2
        size = change / max(float(b.double().norm()), 1e-30)
        if not (name.endswith(".weight") and b.ndim == 2 and b.shape[1] >= 2):  # biases, norms, convolutions
            residual.append((name, size))
            unexplained_sq += change ** 2
            continue
        theta, kept = pair_angles(b, m, tolerance)
        rotated = LF.rotate_by_angles(b.double(), theta)
        unexplained_sq += float((rotated - m.double()).norm()) ** 2
        if not kept:
            residual.append((name, size))
            continue
        layer = name[: -len(".weight")]
        up, down, error = fit_layer(b, m, theta, rank, max_error)
        if dtype != torch.float32 and dtype != torch.float64:  # the error of the factors as they are stored
            up, down = up.to(dtype), down.to(dtype)
            error = weight_error(b, m, up, down)
        factors[layer] = (up, down)
        fits.append(LayerFit(layer, up.shape[1], error, float(theta.abs().max())))
    explained = 1.0 - unexplained_sq / changed_sq if changed_sq else 1.0
    return fits, residual, factors, explained


def _overall(fits: list[LayerFit]) -> float:
    """The layers' errors combined as one relative error (each layer weighted alike)."""
    return math.sqrt(sum(f.weight_error ** 2 for f in fits) / len(fits)) if fits else 0.0


# ----- the authors' angle files

def convert_theta(theta_file: str | os.PathLike, base: str | os.PathLike | Checkpoint, out: str | os.PathLike,
                  allow_pickle: bool = False, overwrite: bool = False) -> Path:
    """The authors' training-time angles (``{module}.theta_a [out, r]`` and ``{module}.theta_b [r, in/2]``, saved
    with ``torch.save`` as ``kduv.pth`` / ``ema_kduv.pth``) as our LoRaD adapter for ``base``: ``up = theta_a``,
    ``down = theta_b``, exactly (their wrapping of ``theta_a @ theta_b`` into [-pi, pi) does not change the
    rotation). The file is a pickle: read only with ``allow_pickle``, and then with ``weights_only=True``."""
    theta_file = Path(theta_file).expanduser()
    if not allow_pickle:
        raise ValueError(f"{theta_file} is a pickle (torch.save) file, which can run code when read; pass "
                         "--allow-pickle to read it (with torch.load(weights_only=True), which runs none)")
    if not theta_file.is_file():
        raise FileNotFoundError(f"the angle file {theta_file} does not exist; give the kduv.pth of a WaDi training")
    ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
    try:
        state = torch.load(theta_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise AdapterError(f"cannot read {theta_file} as angle tensors ({type(err).__name__}: {err}); give the "
                           "kduv.pth a WaDi training wrote") from None
    layers = _theta_layers(state, theta_file)
    shapes = ckpt.layer_shapes
    strip = _common_prefix(layers, shapes)
    prefix = PREFIXES[ckpt.backbone]
    tensors = {}
    for module, (a, b) in layers.items():
        name = module[len(strip):]
        if name not in shapes:
            raise AdapterError(f"{theta_file}: module '{module}' is not a layer of {ckpt.label}; the angles were "
                               "trained for another base model")
        (out_f, _), (_, half) = LF.adapter_shapes(shapes[name], a.shape[1])
        if a.shape[0] != out_f or b.shape[1] != half or a.shape[1] != b.shape[0]:
            raise AdapterError(f"{theta_file}: '{module}' has theta_a {tuple(a.shape)} and theta_b {tuple(b.shape)} "
                               f"but the layer's weight is {tuple(shapes[name])} (needs [{out_f}, r] and [r, {half}]); "
                               "the angles were trained for another base model")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{theta_file}: '{module}' holds NaN or Inf angles; the training diverged")
        key = encode_name(prefix, name)
        tensors[f"{key}.{UP}"], tensors[f"{key}.{DOWN}"] = a.float(), b.float()
    meta = adapter_metadata(ckpt.family, max(a.shape[1] for a, _ in layers.values()), "custom", prefix, len(layers),
                            {"wadi.converted_from": str(theta_file)})
    return fileio.save_safetensors(tensors, out, meta, overwrite)


def _theta_layers(state, path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(state, dict) or not state:
        raise AdapterError(f"{path} holds no angle tensors; give the kduv.pth a WaDi training wrote")
    layers = {}
    for key, value in state.items():
        module, _, part = str(key).rpartition(".")
        if part not in ("theta_a", "theta_b") or not isinstance(value, torch.Tensor) or value.ndim != 2:
            raise AdapterError(f"{path} has an entry '{key}' that is not a 2-D theta_a / theta_b tensor; it is not "
                               "an angle file of WaDi")
        if part == "theta_a":
            partner = state.get(f"{module}.theta_b")
            if partner is None:
                raise AdapterError(f"{path} has '{key}' but no '{module}.theta_b'; the file is incomplete")
            layers[module] = (value, partner)
        elif f"{module}.theta_a" not in state:
            raise AdapterError(f"{path} has '{key}' but no '{module}.theta_a'; the file is incomplete")
    return layers


def _common_prefix(layers, shapes) -> str:
    """A prefix every module name carries that the base's layer names do not (``module.`` of DDP, ``unet.``)."""
    for prefix in ("", "module.", "unet.", "module.unet.", "transformer.", "module.transformer."):
        if all(module.startswith(prefix) and module[len(prefix):] in shapes for module in layers):
            return prefix
    return ""


__all__ = ["Extraction", "LayerFit", "extract", "convert_theta", "pair_angles", "low_rank"]
