"""The one-step recipe for AUTOMATIC1111 and Forge equals WaDi's one-step x0 at t = 999.

Recipe (docs/a1111.md): sampler Euler, 1 step, schedule type Automatic / Uniform (Karras, Simple, SGM Uniform and
Exponential give the same two sigmas at one step), CFG scale 1, and Settings > Sampler parameters >
"SGM noise multiplier" on. The formulas are those of the hosts' k-diffusion path, written here from reading it
(A1111 1.10 ``modules/sd_samplers_kdiffusion.py``, ``sd_schedulers.py``, k-diffusion's ``CompVisDenoiser`` /
``DiscreteSchedule`` and ``sample_euler``; Forge's copies of the same): the discrete schedule's sigmas and their
log-linear interpolation, the scheduler's sigmas for n = 1, the initial noise scaling, the denoiser's
``c_in = 1/sqrt(1 + sigma^2)`` and ``c_out = -sigma``, classifier-free guidance at scale 1 and one Euler step.
Without the SGM noise multiplier the host scales the noise by sigma, not sqrt(1 + sigma^2): the student then sees
noise 0.23% too weak, which the last test shows is not exact."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from conftest import tiny_unet
from wadi_core.sampling.onestep import predict_x0


class DiscreteSchedule:
    """k-diffusion's DiscreteSchedule on SD's alphas_cumprod."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:  # the "Uniform" schedule (and Automatic for Euler)
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])


def schedule_sigmas(name: str, model: DiscreteSchedule, n: int) -> torch.Tensor:
    sigma_min, sigma_max = float(model.sigmas[0]), float(model.sigmas[-1])
    if name == "uniform":
        return model.get_sigmas(n)
    if name == "karras":
        ramp = torch.linspace(0, 1, n)
        rho = 7.0
        min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return torch.cat([(max_inv + ramp * (min_inv - max_inv)) ** rho, torch.zeros(1)])
    if name == "exponential":
        return torch.cat([torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp(), torch.zeros(1)])
    if name == "sgm_uniform":
        start, end = model.sigma_to_t(torch.tensor(sigma_max)), model.sigma_to_t(torch.tensor(sigma_min))
        return torch.tensor([float(model.t_to_sigma(t)) for t in torch.linspace(start, end, n + 1)[:-1]] + [0.0])
    if name == "simple":
        step = len(model.sigmas) / n
        return torch.tensor([float(model.sigmas[-(1 + int(x * step))]) for x in range(n)] + [0.0])
    raise ValueError(name)


def host_one_step(unet, model: DiscreteSchedule, noise, cond, uncond, scheduler="uniform", cfg=1.0,
                  sgm_noise_multiplier=True):
    sigmas = schedule_sigmas(scheduler, model, 1)
    sigma = sigmas[0]
    x = noise * torch.sqrt(1.0 + sigma ** 2) if sgm_noise_multiplier else noise * sigma

    def denoise(x, sigma, context):
        c_in, c_out = 1 / (sigma ** 2 + 1) ** 0.5, -sigma
        t = model.sigma_to_t(sigma.reshape(1)).expand(x.shape[0])
        eps = unet(x * c_in, t, context).sample
        return x + eps * c_out

    cond_out, uncond_out = denoise(x, sigma, cond), denoise(x, sigma, uncond)
    denoised = uncond_out + (cond_out - uncond_out) * cfg
    d = (x - denoised) / sigma  # Euler, s_churn = 0
    return x + d * (sigmas[1] - sigma)


@pytest.fixture(scope="module")
def world():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    unet = tiny_unet()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    cond, uncond = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        want = predict_x0(unet, scheduler, noise, cond)
    return dict(scheduler=scheduler, unet=unet, noise=noise, cond=cond, uncond=uncond, want=want,
                model=DiscreteSchedule(scheduler.alphas_cumprod))


@pytest.mark.parametrize("scheduler", ["uniform", "karras", "exponential", "sgm_uniform", "simple"])
def test_every_schedule_gives_sigma_999_then_zero_at_one_step(world, scheduler):
    model = world["model"]
    sigmas = schedule_sigmas(scheduler, model, 1)
    assert sigmas.shape == (2,) and float(sigmas[1]) == 0.0
    assert math.isclose(float(sigmas[0]), float(model.sigmas[-1]), rel_tol=1e-5)
    assert math.isclose(float(model.sigma_to_t(sigmas[:1])), 999.0, abs_tol=1e-3)


@pytest.mark.parametrize("scheduler", ["uniform", "karras"])
def test_the_recipe_reproduces_the_one_step_x0(world, scheduler):
    with torch.no_grad():
        got = host_one_step(world["unet"], world["model"], world["noise"], world["cond"], world["uncond"],
                            scheduler=scheduler)
    scale = float(world["want"].abs().max())
    assert float((got - world["want"]).abs().max()) <= 1e-5 * scale


def test_without_the_sgm_noise_multiplier_or_with_guidance_it_is_not_exact(world):
    scale = float(world["want"].abs().max())
    with torch.no_grad():
        plain = host_one_step(world["unet"], world["model"], world["noise"], world["cond"], world["uncond"],
                              sgm_noise_multiplier=False)
        guided = host_one_step(world["unet"], world["model"], world["noise"], world["cond"], world["uncond"], cfg=2.0)
    assert float((plain - world["want"]).abs().max()) > 1e-3 * scale
    assert float((guided - world["want"]).abs().max()) > 1e-3 * scale


def test_the_recipe_users_read_is_the_one_tested_here():
    """The settings the web UI and docs/a1111.md show (wadi_core.sampling.onestep.A1111_ONE_STEP)."""
    from wadi_core.sampling.onestep import A1111_ONE_STEP
    settings = dict(A1111_ONE_STEP)
    assert settings["Sampling method"] == "Euler" and settings["Sampling steps"] == "1"
    assert settings["CFG Scale"] == "1"
    assert settings["Settings > Sampler parameters > SGM noise multiplier"].startswith("on")
    assert all(name in settings["Schedule type"] for name in ("Uniform", "Karras", "Simple", "SGM Uniform",
                                                               "Exponential"))
