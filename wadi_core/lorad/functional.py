"""LoRaD as pure tensor math (no nn.Module), see docs/lorad.md ("The rotation of one layer").

A LoRaD adapter on a weight ``W`` of shape ``[out, in]`` (or a conv kernel, flattened to
``[out, in*kh*kw]``) rotates the entries of every row in adjacent pairs ``(2j, 2j+1)`` by the
angle ``strength * (up @ down)[row, j]``. Rotations of the same pairs commute, so several
adapters compose by adding their angles, and strength ``-1`` undoes strength ``1`` exactly.

Angles, cos and sin are float32 (float64 for float64 inputs); the result is cast back to the weight's dtype.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = [
    "angles",
    "summed_angles",
    "rotate",
    "rotate_by_angles",
    "merge",
    "unmerge",
    "delta",
    "flat_in_features",
    "adapter_shapes",
    "rotation_angle_grad",
    "angles_are_finite",
]


def flat_in_features(weight_shape: Sequence[int]) -> int:
    """Input size of a weight once flattened to ``[out, in*kh*kw]``."""
    n = 1
    for d in weight_shape[1:]:
        n *= int(d)
    return n


def adapter_shapes(weight_shape: Sequence[int], rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of ``(up, down)`` for a weight of ``weight_shape`` at ``rank``."""
    return (int(weight_shape[0]), rank), (rank, flat_in_features(weight_shape) // 2)


def math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs; float64 stays float64 (e.g. for gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def angles(up: torch.Tensor, down: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The angle matrix ``strength * up @ down`` (at least float32), shape ``[out, in//2]``."""
    dtype = math_dtype(up, down)
    theta = up.to(dtype) @ down.to(dtype)
    return theta if strength == 1.0 else theta * strength


def angles_are_finite(up: torch.Tensor, down: torch.Tensor, strength: float = 1.0) -> bool:
    """Whether ``strength * up @ down`` is finite in the float32 the rotation uses: finite factors can still
    overflow in their product (factors of 1e30 give angles of 1e60). A Cauchy-Schwarz bound on the largest
    angle decides without the product in the common case."""
    limit = torch.finfo(torch.float32).max / 4
    bound = up.double().norm(dim=1).max() * down.double().norm(dim=0).max() * abs(float(strength))
    if bool(torch.isfinite(bound)) and float(bound) < limit:
        return True
    return bool(torch.isfinite(angles(up, down, strength)).all())


def summed_angles(adapters: Iterable[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor | None:
    """Sum of the angle matrices of several ``(up, down, strength)`` adapters on one layer."""
    total = None
    for up, down, strength in adapters:
        if strength == 0.0:
            continue
        theta = angles(up, down, strength)
        total = theta if total is None else total + theta
    return total


def _as_complex(flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View the input pairs ``(2j, 2j+1)`` of a ``[out, in]`` matrix as ``[out, in//2]`` complex
    numbers ``W[:, 2j] + i W[:, 2j+1]`` (a copy only when a cast or an odd size needs one)."""
    half = flat.shape[1] // 2
    pairs = flat[:, : 2 * half].to(dtype)
    if not pairs.is_contiguous():
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs.view(flat.shape[0], half, 2))


def _from_complex(z: torch.Tensor, flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.view_as_real(z).reshape(flat.shape[0], -1)
    if flat.shape[1] % 2:  # odd input size: the last column is not rotated
        out = torch.cat((out, flat[:, -1:].to(out.dtype)), dim=1)
    return out.to(dtype)


def rotate_by_angles(weight: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
    """Rotate the input-pairs of every row of ``weight`` by ``theta`` ``[out, in//2]``.

    A pair ``(e, o)`` rotated by ``t`` is the complex product ``(e + i o) * exp(i t)``, which is
    exactly the spec's ``(e cos t - o sin t, e sin t + o cos t)`` in one fused kernel.
    Returns a new tensor of ``weight``'s shape and dtype; ``weight`` is not modified. An odd
    (flattened) input size leaves the last column unrotated.
    """
    if theta is None:
        return weight.clone()
    flat = weight.reshape(weight.shape[0], -1)
    half = flat.shape[1] // 2
    if theta.shape != (flat.shape[0], half):
        raise ValueError(
            f"angle matrix has shape {tuple(theta.shape)} but a weight of shape {tuple(weight.shape)} "
            f"needs {(flat.shape[0], half)}"
        )
    dtype = math_dtype(weight, theta)
    theta = theta.to(dtype)
    turn = torch.polar(torch.ones((), dtype=dtype, device=theta.device).expand_as(theta), theta)  # exp(i theta)
    return _from_complex(_as_complex(flat, dtype) * turn, flat, weight.dtype).reshape(weight.shape)


def rotate(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``W'`` of the spec: ``weight`` rotated by ``strength * up @ down``."""
    if strength == 0.0:
        return weight.clone()
    return rotate_by_angles(weight, angles(up, down, strength))


def merge(weight: torch.Tensor, adapters: Iterable[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """Bake several ``(up, down, strength)`` adapters into ``weight`` (angles add)."""
    return rotate_by_angles(weight, summed_angles(adapters))


def unmerge(weight: torch.Tensor, adapters: Iterable[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """Undo :func:`merge`: rotate back by the negated summed angles."""
    total = summed_angles(adapters)
    return rotate_by_angles(weight, None if total is None else -total)


def delta(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Additive form ``W' - W`` in float32, e.g. for an SVD export to a plain LoRA."""
    dtype = math_dtype(weight)
    return rotate(weight.to(dtype), up, down, strength) - weight.to(dtype)


def rotation_angle_grad(rotated: torch.Tensor, grad_rotated: torch.Tensor) -> torch.Tensor:
    """``dL/dphi`` for ``phi`` the applied angles, from ``W'`` and ``G = dL/dW'`` (at least float32).

    ``dW'_e/dphi = -W'_o`` and ``dW'_o/dphi = W'_e`` give ``W'_e * G_o - W'_o * G_e``, which is
    the imaginary part of ``conj(W') * G`` in the complex pair view.
    """
    dtype = math_dtype(rotated, grad_rotated)
    flat_r = rotated.reshape(rotated.shape[0], -1)
    flat_g = grad_rotated.reshape(grad_rotated.shape[0], -1)
    return (_as_complex(flat_r, dtype).conj() * _as_complex(flat_g, dtype)).imag


def truncated_svd(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``rank`` singular triplets ``(u [m, r], s [r], vh [r, n])`` of a 2-D matrix: exact, or randomised
    (8 extra columns, 4 power iterations, a fixed seed so that it repeats) when the rank is small against the
    matrix, as for SD-size layers. Either way ``u diag(s) vh`` misses ``||matrix||_F^2 - sum(s^2)`` exactly: the
    randomised factors are the exact SVD of the matrix's projection onto an orthonormal basis."""
    r = min(rank, *matrix.shape)
    if 4 * (r + 8) < min(matrix.shape):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(matrix, q=r + 8, niter=4)
        return u[:, :r], s[:r], v[:, :r].T
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :r], s[:r], vh[:r]
