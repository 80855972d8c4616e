"""What a backbone's output means, in its own parameterisation, and the conversions between them.

A diffusion model at ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` predicts either the noise ``eps``
(``prediction_type="epsilon"``: SD1.x, SD2.x base, the embedded world) or the velocity
``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (``"v_prediction"``: SD2.x 768 and others). The formulas
(docs/distillation.md, "The losses"):

    eps = sqrt(1 - abar) x_t + sqrt(abar) v        x0 = sqrt(abar) x_t - sqrt(1 - abar) v

Flow-matching models (SD3, FLUX) and ``"sample"`` prediction are refused.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample, shaped to broadcast over ``like``'s other dimensions."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def prediction_type(scheduler_config) -> str:
    """The model's parameterisation from its scheduler's config; anything but eps and v is refused by name."""
    kind = scheduler_config.get("prediction_type", "epsilon")
    name = str(scheduler_config.get("_class_name", ""))
    if "FlowMatch" in name or "flow" in str(kind).lower():
        raise ValueError(f"the model is a flow-matching model ({name or kind}, as SD3 and FLUX are); wadi distils and "
                         "samples eps- and v-prediction diffusion models only (SD1.x, SD2.x, PixArt-alpha)")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"the model predicts '{kind}'; wadi supports eps-prediction and v-prediction models "
                         "(prediction_type 'epsilon' or 'v_prediction')")
    return kind


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` with one ``abar`` per sample."""
    a = per_sample(abar_t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def eps_from_output(output: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor, kind: str) -> torch.Tensor:
    """The noise prediction of a model whose raw output is ``output`` in parameterisation ``kind``."""
    if kind == "epsilon":
        return output
    a = per_sample(abar_t, x_t)
    return (1 - a).sqrt() * x_t + a.sqrt() * output


def x0_from_output(output: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor, kind: str) -> torch.Tensor:
    """The clean latent a model's raw output at ``x_t`` stands for."""
    if kind == "epsilon":
        return x0_from_eps(x_t, output, abar_t)
    a = per_sample(abar_t, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * output


def target(x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor, kind: str) -> torch.Tensor:
    """What a model in parameterisation ``kind`` should output at ``x_t = sqrt(abar) x0 + sqrt(1 - abar) noise``."""
    if kind == "epsilon":
        return noise
    a = per_sample(abar_t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def denoising_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The regression target of the usual denoising loss at timesteps ``t`` for the scheduler's model (what
    DreamBooth, ReVersion and ControlNet training compare the model's output with)."""
    abar = scheduler.alphas_cumprod.to(x0.device)[t.to(x0.device)]  # the schedule stays on the CPU
    return target(x0, noise, abar, prediction_type(scheduler.config))
