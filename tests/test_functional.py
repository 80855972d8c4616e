"""The rotation math of docs/lorad.md ("The rotation of one layer"), one identity per test."""

import pytest
import torch

from wadi_core.lorad import functional as LF


def factors(out=6, inp=10, rank=3, seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64).float()
    up = torch.randn(out, rank, generator=g) * scale
    down = torch.randn(rank, inp // 2, generator=g) * scale
    return w, up, down


def reference_rotate(w, theta):
    """Straight from the spec's formulas, column by column."""
    out = w.clone().double()
    for j in range(w.shape[1] // 2):
        e, o, t = w[:, 2 * j].double(), w[:, 2 * j + 1].double(), theta[:, j].double()
        out[:, 2 * j] = e * torch.cos(t) - o * torch.sin(t)
        out[:, 2 * j + 1] = e * torch.sin(t) + o * torch.cos(t)
    return out


@pytest.mark.parametrize("inp", [10, 11])
def test_rotate_matches_the_spec_formula_and_leaves_an_odd_last_column(inp):
    w, up, down = factors(inp=inp)
    got = LF.rotate(w, up, down, strength=0.8)
    want = reference_rotate(w, 0.8 * (up @ down))
    assert torch.allclose(got.double(), want, atol=1e-6)
    if inp % 2:
        assert torch.equal(got[:, -1], w[:, -1])


def test_zero_up_is_identity():
    w, _, down = factors()
    assert torch.equal(LF.rotate(w, torch.zeros(6, 3), down), w)


def test_row_norms_are_preserved_at_every_strength():
    w, up, down = factors(scale=2.0)
    for s in (-3.0, -1.0, 0.5, 1.0, 7.0):
        assert torch.allclose(LF.rotate(w, up, down, s).norm(dim=1), w.norm(dim=1), rtol=1e-5)


def test_strength_semantics():
    w, up, down = factors()
    assert torch.equal(LF.rotate(w, up, down, 0.0), w)
    forward = LF.rotate(w, up, down, 1.0)
    assert not torch.allclose(forward, w)
    assert torch.allclose(LF.rotate(forward, up, down, -1.0), w, atol=1e-6)
    # strength scales the angles, not the weight difference
    half_twice = LF.rotate(LF.rotate(w, up, down, 0.5), up, down, 0.5)
    assert torch.allclose(half_twice, forward, atol=1e-6)
    assert not torch.allclose(LF.rotate(w, up, down, 0.5), w + 0.5 * (forward - w), atol=1e-4)


def test_merge_unmerge_round_trip_relative_error():
    w, up, down = factors(out=64, inp=128, rank=8, scale=1.0)
    adapters = [(up, down, 1.0)]
    restored = LF.unmerge(LF.merge(w, adapters), adapters)
    assert ((restored - w).norm() / w.norm()).item() <= 1e-5


def test_two_adapters_commute_and_equal_summed_angles():
    w, up1, down1 = factors(seed=1)
    _, up2, down2 = factors(seed=2)
    a = LF.rotate(LF.rotate(w, up1, down1, 0.7), up2, down2, -1.3)
    b = LF.rotate(LF.rotate(w, up2, down2, -1.3), up1, down1, 0.7)
    c = LF.rotate_by_angles(w, 0.7 * up1 @ down1 - 1.3 * up2 @ down2)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    assert torch.allclose(LF.merge(w, [(up1, down1, 0.7), (up2, down2, -1.3)]), c, atol=1e-6)


def test_delta_is_rotated_minus_base():
    w, up, down = factors()
    assert torch.allclose(w + LF.delta(w, up, down), LF.rotate(w, up, down), atol=1e-6)


def test_conv_kernel_is_rotated_flattened():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, 3, 3, generator=g)
    (o, r), (_, half) = LF.adapter_shapes(w.shape, 2)
    assert (o, half) == (4, 13)  # 27 inputs: 13 pairs and one unrotated column
    up, down = torch.randn(o, r, generator=g), torch.randn(r, half, generator=g)
    got = LF.rotate(w, up, down)
    assert got.shape == w.shape
    assert torch.allclose(got.reshape(4, -1), LF.rotate(w.reshape(4, -1), up, down))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_use_float32_angles(dtype):
    w, up, down = factors(out=32, inp=64, rank=4)
    got = LF.rotate(w.to(dtype), up, down)
    assert got.dtype == dtype
    want = LF.rotate(w.to(dtype).float(), up, down)
    assert torch.equal(got, want.to(dtype))  # fp32 math, one rounding at the end
    assert LF.angles(up.to(dtype), down.to(dtype)).dtype == torch.float32


def test_angle_gradient_formula_matches_autograd():
    w, up, down = factors()
    theta = (up @ down).requires_grad_(True)
    g = torch.randn(w.shape)
    rotated = LF.rotate_by_angles(w, theta)
    (rotated * g).sum().backward()
    assert torch.allclose(LF.rotation_angle_grad(rotated.detach(), g), theta.grad, atol=1e-5)


def test_rank_one_equals_peft_oft_block_size_two():
    """Independent oracle: PEFT's OFT with 2x2 blocks is one Givens rotation per input pair,
    shared by all rows. Its Cayley parameter q is the angle 2*atan(q) in our convention."""
    peft = pytest.importorskip("peft")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 5))
    base_weight = model[0].weight.detach().clone()
    config = peft.OFTConfig(target_modules=["0"], oft_block_size=2, r=0, use_cayley_neumann=False,
                            module_dropout=0.0, init_weights=True)
    peft_model = peft.get_peft_model(model, config)
    layer = peft_model.base_model.model[0]
    oft = layer.oft_R["default"]
    q = torch.randn_like(oft.weight) * 0.8
    with torch.no_grad():
        oft.weight.copy_(q)
    x = torch.randn(7, 12)
    peft_out = peft_model(x)

    theta = 2 * torch.atan(q.reshape(1, -1))  # [1, in//2]
    up = torch.ones(5, 1)
    ours = x @ LF.rotate(base_weight, up, theta).t() + layer.base_layer.bias
    assert torch.allclose(ours, peft_out, atol=1e-5)


def test_truncated_svd_repeats_and_reports_the_error_of_its_factors():
    """Randomised for a small rank of a large matrix: the same factors on every call, exact on a matrix of that
    rank, and ||A||^2 - sum(s^2) is the error of u diag(s) vh (what export-lora reports); exact SVD otherwise."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(200, 4, generator=g) @ torch.randn(4, 150, generator=g)
         + 1e-3 * torch.randn(200, 150, generator=g)).double()  # float64: the identity below cancels 1e5 to 1e-2
    u, s, vh = LF.truncated_svd(a, 4)
    again = LF.truncated_svd(a, 4)
    assert all(torch.equal(x, y) for x, y in zip((u, s, vh), again))
    exact = torch.linalg.svdvals(a)
    assert torch.allclose(s, exact[:4], rtol=1e-4)
    err = (a - u @ torch.diag(s) @ vh).pow(2).sum()
    assert torch.allclose(err, a.pow(2).sum() - s.pow(2).sum(), rtol=1e-6)
    assert torch.allclose(err, exact[4:].pow(2).sum(), rtol=1e-2)  # as good as the best rank-4 approximation
    u, s, vh = LF.truncated_svd(a[:20, :30], 4)  # small: the exact SVD
    assert torch.allclose(s, torch.linalg.svdvals(a[:20, :30])[:4])
