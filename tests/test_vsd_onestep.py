"""VSD losses and one-step prediction, against their defining formulas."""

import numpy as np
import pytest
import torch

from wadi_core.distill import losses as vsd
from wadi_core.sampling.onestep import generate, predict_x0


def test_x0_formula_inverts_add_noise():
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([20, 500, 999])
    x_t = sched.add_noise(x0, noise, t)
    assert torch.allclose(vsd.x0_from_eps(x_t, noise, sched.alphas_cumprod[t]), x0, atol=1e-3)
    assert float(sched.alphas_cumprod[999]) == pytest.approx(0.0047, abs=1e-4)


def test_generator_loss_gradient_is_the_score_gradient():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    x_t, e_real, e_fake = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    abar = torch.tensor([0.9, 0.2])
    grad = vsd.score_gradient(x0.detach(), x_t, e_real, e_fake, abar, "wadi")
    assert torch.allclose(grad, (1 - abar).view(-1, 1, 1, 1) * (e_real - e_fake))
    vsd.generator_loss(x0, grad).backward()
    assert torch.allclose(x0.grad, grad / x0.numel(), atol=1e-7)


def test_dmd2_gradient_is_normalised_per_sample_and_finite():
    g = torch.Generator().manual_seed(2)
    x0, x_t, e_real, e_fake = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(4))
    abar = torch.tensor([0.5, 0.5])
    grad = vsd.score_gradient(x0, x_t, e_real, e_fake, abar, "dmd2")
    x0_real = vsd.x0_from_eps(x_t, e_real, abar)
    x0_fake = vsd.x0_from_eps(x_t, e_fake, abar)
    want = (x0_fake - x0_real) / (x0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(grad, want, atol=1e-5)
    e_real[0, 0, 0, 0] = float("nan")
    assert torch.isfinite(vsd.score_gradient(x0, x_t, e_real, e_fake, abar, "wadi")).all()
    with pytest.raises(ValueError, match="unknown gradient mode"):
        vsd.score_gradient(x0, x_t, e_real, e_fake, abar, "sds")


def test_fake_loss_weights_by_alpha_bar_and_timestep_ranges():
    pred, noise = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    assert vsd.fake_model_loss(pred, torch.zeros_like(pred), noise, torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    g = torch.Generator().manual_seed(0)
    t = vsd.sample_generator_timesteps(20000, g)
    assert int(t.min()) == 20 and int(t.max()) == 980
    t = vsd.sample_generator_timesteps(20000, g, t_range=(100, 600))
    assert int(t.min()) == 100 and int(t.max()) == 600
    t = vsd.sample_fake_timesteps(20000, generator=g)
    assert int(t.min()) == 0 and int(t.max()) == 999
    assert torch.equal(vsd.guided(torch.zeros(1), torch.ones(1), 1.5), torch.tensor([1.5]))


def test_one_step_generation_uses_t999_and_the_x0_formula():
    from wadi_core.shapes import components as C
    c = C.new_components(seed=0)
    calls = []
    original = c.unet.forward
    c.unet.forward = lambda x, t, ctx, **kw: calls.append(t.clone()) or original(x, t, ctx, **kw)
    images = generate(c, ["a red circle", "a blue square"], seeds=[1, 2], progress=False)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert all(int(t.unique()) == 999 for t in calls) and len(calls) == 1
    noise = torch.randn(1, 4, 8, 8)
    text = c.encode_prompts(["a red circle"])
    with torch.no_grad():
        eps = original(noise, torch.tensor([999]), text).sample
        abar = c.scheduler.alphas_cumprod[999]
        assert torch.allclose(predict_x0(original.__self__, c.scheduler, noise, text),
                              (noise - (1 - abar).sqrt() * eps) / abar.sqrt(), atol=1e-5)


def test_gan_losses_and_head_shapes():
    from wadi_core.distill import gan
    high, low = torch.full((4,), 5.0), torch.full((4,), -5.0)
    assert gan.discriminator_loss(high, low) < 0.02 < gan.discriminator_loss(low, high)
    assert gan.generator_loss(high) < 0.01 < gan.generator_loss(low)
    head = gan.DiscriminatorHead(64)
    assert head(torch.randn(3, 64, 2, 2)).shape == (3,)  # UNet features: a patch classifier
    assert gan.DiscriminatorHead(64, tokens=True)(torch.randn(3, 10, 64)).shape == (3,)  # DiT tokens
    assert not hasattr(head, "tokens")  # only the weights a loss reaches (DDP refuses others)


def test_feature_tap_reads_the_mid_block_only_while_capturing():
    from conftest import tiny_unet
    from wadi_core.distill import gan
    unet = tiny_unet()
    tap = gan.FeatureTap(unet)
    x, t, cond = torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), torch.randn(2, 5, 32)
    with torch.no_grad():
        unet(x, t, cond)
        assert tap.features is None
        with tap.capture():
            unet(x, t, cond)
    assert tap.features.shape == (2, gan.feature_channels(unet), 8, 8)
    last = gan.FeatureTap(unet, "last")  # the last up block: the full latent resolution
    with torch.no_grad(), last.capture():
        unet(x, t, cond)
    assert last.features.shape == (2, gan.feature_channels(unet, "last"), 16, 16) == (2, 32, 16, 16)
    with pytest.raises(ValueError, match="unknown GAN feature place 'top'"):
        gan.FeatureTap(unet, "top")


# ----- v-prediction teachers: each formula against a direct computation


def _noised(seed=3):
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction")
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([20, 500, 999])
    return sched, x0, noise, t, sched.add_noise(x0, noise, t), sched.alphas_cumprod[t]


def test_v_target_eps_and_x0_agree_with_diffusers():
    from wadi_core.sampling import prediction as P
    sched, x0, noise, t, x_t, abar = _noised()
    v = sched.get_velocity(x0, noise, t)  # diffusers' own v
    assert torch.allclose(P.target(x0, noise, abar, "v_prediction"), v, atol=1e-5)
    assert torch.allclose(P.eps_from_output(v, x_t, abar, "v_prediction"), noise, atol=1e-4)
    assert torch.allclose(P.x0_from_output(v, x_t, abar, "v_prediction"), x0, atol=1e-4)
    assert torch.equal(P.eps_from_output(v, x_t, abar, "epsilon"), v)  # eps models pass through
    assert torch.equal(P.target(x0, noise, abar, "epsilon"), noise)


def test_v_fake_loss_is_the_eps_loss_of_the_same_prediction():
    from wadi_core.sampling import prediction as P
    _, x0, noise, _, x_t, abar = _noised(4)
    v_pred = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    eps_pred = P.eps_from_output(v_pred, x_t, abar, "v_prediction")
    direct = ((abar.view(-1, 1, 1, 1) * (eps_pred - noise).square()).mean())
    assert vsd.fake_model_loss(v_pred, x0, noise, abar, "v_prediction") == pytest.approx(float(direct), rel=1e-4)
    v = P.target(x0, noise, abar, "v_prediction")
    assert float(vsd.fake_model_loss(v, x0, noise, abar, "v_prediction")) == pytest.approx(0.0, abs=1e-8)


def test_v_score_gradient_and_guidance_commute_with_the_conversion():
    from wadi_core.sampling import prediction as P
    _, x0, noise, _, x_t, abar = _noised(6)
    g = torch.Generator().manual_seed(7)
    vu, vc, vf = (torch.randn(x0.shape, generator=g) for _ in range(3))
    eps = lambda v: P.eps_from_output(v, x_t, abar, "v_prediction")  # noqa: E731
    guided_then_eps = eps(vsd.guided(vu, vc, 2.0))
    assert torch.allclose(guided_then_eps, vsd.guided(eps(vu), eps(vc), 2.0), atol=1e-5)
    grad = vsd.score_gradient(x0, x_t, guided_then_eps, eps(vf), abar, "wadi")
    a = abar.view(-1, 1, 1, 1)
    # sigma^2 (eps_teacher - eps_fake) = sigma^2 sqrt(abar) (v_teacher - v_fake)
    assert torch.allclose(grad, (1 - a) * a.sqrt() * (vsd.guided(vu, vc, 2.0) - vf), atol=1e-5)


def test_one_step_x0_of_a_v_prediction_model():
    from wadi_core.shapes import components as C
    c = C.new_components(seed=0)
    c.scheduler = type(c.scheduler).from_config({**c.scheduler.config, "prediction_type": "v_prediction"})
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = c.encode_prompts(["a red circle"])
    with torch.no_grad():
        v = c.unet(noise, torch.tensor([999]), text).sample
        abar = c.scheduler.alphas_cumprod[999]
        assert torch.allclose(predict_x0(c.unet, c.scheduler, noise, text),
                              abar.sqrt() * noise - (1 - abar).sqrt() * v, atol=1e-5)


@pytest.mark.parametrize("config, words", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler"}, "flow-matching"),
    ({"prediction_type": "flow_prediction"}, "flow-matching"),
    ({"prediction_type": "sample"}, "predicts 'sample'"),
])
def test_flow_matching_and_sample_prediction_are_refused_by_name(config, words):
    from wadi_core.sampling import prediction_type
    with pytest.raises(ValueError, match=words):
        prediction_type(config)
    assert prediction_type({"prediction_type": "v_prediction"}) == "v_prediction"
    assert prediction_type({}) == "epsilon"
