"""WaDi / VSD losses as pure functions (the equations: docs/distillation.md, "The losses").

The student maps noise to ``x0`` in one step; the teacher ("real") and the fake score model
both predict eps on a re-noised ``x0``. The generator is pushed along
``grad = sigma_t^2 (eps_teacher - eps_fake)`` through the surrogate
``0.5 * mse(x0, (x0 - grad).detach())``, whose gradient w.r.t. ``x0`` is ``grad / numel``.
The fake model learns the student's distribution with the usual eps loss weighted by alpha-bar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling.prediction import per_sample, target, x0_from_eps

GENERATOR_T_RANGE = (20, 980)  # inclusive, as the authors' [0.02, 0.981) * 1000
GRADIENT_MODES = ("wadi", "dmd2")


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sample_generator_timesteps(n: int, generator: torch.Generator | None = None, device=None,
                               t_range: tuple[int, int] = GENERATOR_T_RANGE) -> torch.Tensor:
    """Timesteps of the VSD gradient, uniform in ``t_range`` (inclusive; the spec's range by default)."""
    low, high = t_range
    return torch.randint(low, high + 1, (n,), generator=generator).to(device)


def sample_fake_timesteps(n: int, num_train_timesteps: int = 1000, generator: torch.Generator | None = None,
                          device=None) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (n,), generator=generator).to(device)


def score_gradient(x0: torch.Tensor, x_t: torch.Tensor, eps_teacher: torch.Tensor, eps_fake: torch.Tensor,
                   abar_t: torch.Tensor, mode: str = "wadi") -> torch.Tensor:
    """The direction that moves ``x0`` away from the fake and toward the teacher distribution.

    ``wadi``: ``sigma_t^2 (eps_teacher - eps_fake)`` in eps space (the paper's recipe).
    ``dmd2``: ``(x0_fake - x0_teacher) / mean|x0 - x0_teacher|`` in x0 space, per sample.
    NaN and Inf are replaced by finite values so that one bad sample cannot poison a step.
    """
    if mode == "wadi":
        sigma2 = 1 - per_sample(abar_t, x0)
        grad = sigma2 * (eps_teacher - eps_fake)
    elif mode == "dmd2":
        x0_teacher = x0_from_eps(x_t, eps_teacher, abar_t)
        x0_fake = x0_from_eps(x_t, eps_fake, abar_t)
        norm = (x0 - x0_teacher).abs().mean(dim=tuple(range(1, x0.dim())), keepdim=True).clamp(min=1e-8)
        grad = (x0_fake - x0_teacher) / norm
    else:
        raise ValueError(f"unknown gradient mode '{mode}'; choose one of: {', '.join(GRADIENT_MODES)}")
    return torch.nan_to_num(grad.float(), nan=0.0, posinf=0.0, neginf=0.0)


def generator_loss(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 * mse(x0, (x0 - grad).detach())``: its gradient w.r.t. ``x0`` is ``grad / numel``."""
    return 0.5 * F.mse_loss(x0.float(), (x0.float() - grad).detach())


def fake_model_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor,
                    kind: str = "epsilon") -> torch.Tensor:
    """The fake model's denoising loss on ``x_t = sqrt(abar) x0 + sqrt(1 - abar) noise``, in its own
    parameterisation ``kind``. Eps: ``mean(abar (eps_pred - noise)^2)`` (the authors' ``mse(sqrt(abar) eps_pred,
    sqrt(abar) noise)``). V: ``mean(abar^2 (v_pred - v)^2)``, the same objective, since ``eps_pred - noise =
    sqrt(abar) (v_pred - v)``."""
    a = per_sample(abar_t, pred).float()
    weight = a if kind == "epsilon" else a.square()
    return (weight * (pred.float() - target(x0.float(), noise.float(), abar_t, kind)).square()).mean()


def regression_loss(x0: torch.Tensor, teacher_x0: torch.Tensor) -> torch.Tensor:
    """DMD's regression term in latent space: the one-step ``x0`` of a pair's noise against the
    teacher's multi-step result from the same noise and prompt."""
    return F.mse_loss(x0.float(), teacher_x0.float())
