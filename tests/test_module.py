"""Attaching LoRaD to models: training forward, caching, stacking, merge, detach."""

import pytest
import torch
from torch import nn

from wadi_core import lorad
from wadi_core.lorad import functional as LF

from conftest import MLP, randomize


def rotated_reference(model, x):
    """The same network computed with plain autograd through the spec's formula."""
    h = x
    for layer in (model.a, model.b):
        ads = [a for a in layer.lorad_adapters.values() if not a.merged]
        w = LF.rotate_by_angles(layer.weight, LF.summed_angles((a.up, a.down, a.strength) for a in ads))
        h = nn.functional.linear(h, w, layer.bias)
        if layer is model.a:
            h = torch.relu(h)
    return h


def test_identity_at_init_and_only_adapters_train():
    model = MLP()
    x = torch.randn(4, 9)
    before = model(x)
    names = lorad.attach(model, rank=2, targets=["*"])
    assert names == ["a", "b"]
    assert torch.equal(model(x), before)
    trainable = {id(p) for p in lorad.trainable_parameters(model)}
    assert all((id(p) in trainable) == p.requires_grad for p in model.parameters())
    assert lorad.count_parameters(model) == 2 * (6 + 4) + 2 * (5 + 3)


def test_training_forward_and_backward_match_plain_autograd():
    model = MLP().train()
    lorad.attach(model, rank=3, targets=["*"])
    lorad.attach(model, rank=2, targets=["b"], adapter_name="second", strength=-0.6)
    randomize(lorad.trainable_parameters(model))
    x = torch.randn(5, 9, requires_grad=True)
    y = model(x)
    y.square().sum().backward()
    ours = [p.grad.clone() for p in lorad.trainable_parameters(model)] + [x.grad.clone()]
    for p in lorad.trainable_parameters(model):
        p.grad = None
    x.grad = None
    y_ref = rotated_reference(model, x)
    assert torch.allclose(y, y_ref, atol=1e-5)
    y_ref.square().sum().backward()
    ref = [p.grad for p in lorad.trainable_parameters(model)] + [x.grad]
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("x_shape", [(3, 2, 7), (1, 1, 7)], ids=["keeps-rotated", "recomputes"])
def test_gradcheck_float64(x_shape):
    """Both backward paths: an input at least the weight's size (4 x 7) keeps the rotated weight, a smaller one
    recomputes it."""
    layer = nn.Sequential(nn.Linear(7, 4).double()).train()
    lorad.attach(layer, rank=2, targets=["*"])
    lorad.attach(layer, rank=1, targets=["*"], adapter_name="b", strength=0.5)
    randomize(lorad.trainable_parameters(layer))
    layer[0].weight.requires_grad_(True)
    layer[0].bias.requires_grad_(True)
    params = [p.double() for p in lorad.trainable_parameters(layer)]
    for p, q in zip(lorad.trainable_parameters(layer), params):
        p.data = q.data
    x = torch.randn(*x_shape, dtype=torch.float64, requires_grad=True)

    def f(x, w, b, *ud):
        from wadi_core.lorad.module import _RotatedLinearFn
        return _RotatedLinearFn.apply(x, w, b, (1.0, 0.5), *ud)

    assert torch.autograd.gradcheck(f, (x, layer[0].weight, layer[0].bias, *lorad.trainable_parameters(layer)))


def saved_full_size(model, x):
    """The tensors autograd keeps for backward that are at least the weight's size, other than the weight."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    weight = model[0].weight
    return [t for t in saved if t.numel() >= weight.numel() and t.data_ptr() != weight.data_ptr()]


def test_backward_keeps_the_rotated_weight_only_when_the_input_is_larger():
    model = nn.Sequential(nn.Linear(256, 512)).train()
    lorad.attach(model, rank=4, targets=["*"])
    randomize(lorad.trainable_parameters(model))
    # 8 x 256 inputs against a 512 x 256 weight: only the base weight (already alive) is full size, never W'
    assert saved_full_size(model, torch.randn(8, 256)) == []
    # 600 x 256 inputs: x is larger than the weight, and W' is kept beside it
    kept = saved_full_size(model, torch.randn(600, 256))
    assert sorted(tuple(t.shape) for t in kept) == [(512, 256), (600, 256)]
    with torch.no_grad():
        w_rotated = LF.rotate(model[0].weight, *lorad.trainable_parameters(model))
    assert torch.equal(next(t for t in kept if t.shape == (512, 256)), w_rotated)


def test_eval_cache_is_reused_and_invalidated():
    model = MLP().eval()
    lorad.attach(model, rank=2, targets=["*"])
    randomize(lorad.trainable_parameters(model))
    x = torch.randn(3, 9)
    with torch.no_grad():
        y1 = model(x)
        cached = model.a.__dict__["_lorad_cache"][1]
        y2 = model(x)
        assert model.a.__dict__["_lorad_cache"][1] is cached and torch.equal(y1, y2)
        model.a.lorad_adapters["default"].up.mul_(2)  # in-place change (as an optimiser step) invalidates
        y3 = model(x)
    assert not torch.allclose(y1, y3)
    assert torch.allclose(y3, rotated_reference(model, x), atol=1e-5)
    lorad.set_strength(model, 0.0)
    with torch.no_grad():
        assert torch.allclose(model(x), MLP.forward(model, x), atol=0)


def test_strength_zero_and_minus_one():
    model = MLP()
    x = torch.randn(3, 9)
    with torch.no_grad():
        plain = model(x)
    lorad.attach(model, rank=2, targets=["*"])
    randomize(lorad.trainable_parameters(model))
    lorad.set_strength(model, 0.0)
    with torch.no_grad():
        assert torch.equal(model(x), plain)
    lorad.set_strength(model, 1.0)
    lorad.merge_adapters(model)
    # a merged +1 followed by an active -1 copy of the same adapter gives the base model back
    from wadi_core.lorad.module import adapter_tensors, attach_weights
    attach_weights(model, adapter_tensors(model), adapter_name="inverse", strength=-1.0)
    with torch.no_grad():
        assert torch.allclose(model(x), plain, atol=1e-5)


def test_merge_in_place_and_exact_unmerge():
    model = MLP()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lorad.attach(model, rank=3, targets=["*"])
    lorad.attach(model, rank=2, targets=["*"], adapter_name="other", strength=0.4)
    randomize(lorad.trainable_parameters(model))
    x = torch.randn(4, 9)
    with torch.no_grad():
        live = model(x)
        lorad.merge_adapters(model)
        assert torch.allclose(model(x), live, atol=1e-5)  # forward now uses the baked weight
        assert not torch.allclose(model.a.weight, base["a.weight"])
        lorad.unmerge_adapters(model)
    for key in ("a.weight", "b.weight"):
        err = (model.state_dict()[key] - base[key]).norm() / base[key].norm()
        assert err <= 1e-5


def test_detach_restores_class_and_keys():
    model = MLP()
    keys = set(model.state_dict())
    lorad.attach(model, rank=2, targets=["*"])
    lorad.attach(model, rank=2, targets=["a"], adapter_name="x")
    assert lorad.adapter_names(model) == ["default", "x"]
    lorad.detach(model, "x")
    assert lorad.adapter_names(model) == ["default"]
    lorad.detach(model)
    assert set(model.state_dict()) == keys and "forward" not in model.a.__dict__
    with pytest.raises(KeyError, match="no LoRaD adapter named"):
        lorad.trainable_parameters(model, "x")


def test_same_adapter_name_twice_is_refused_before_any_change():
    model = MLP()
    lorad.attach(model, rank=2, targets=["b"])
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        lorad.attach(model, rank=2, targets=["*"])
    assert not hasattr(model.a, "lorad_adapters")


def test_conv_layers_only_when_asked():
    model = MLP(conv=True)
    assert "conv" not in lorad.attach(model, rank=2, targets=["*"])
    lorad.detach(model)
    assert "conv" in lorad.attach(model, rank=2, targets=["conv"], include_conv=True)
    randomize(lorad.trainable_parameters(model))
    x = torch.randn(1, 3, 8, 8)
    want = nn.functional.conv2d(x, LF.rotate(model.conv.weight, *[
        getattr(model.conv.lorad_adapters["default"], n) for n in ("up", "down")]), model.conv.bias)
    model.train()
    y = model.conv(x)
    y.sum().backward()
    assert torch.allclose(y, want, atol=1e-5)
    assert model.conv.lorad_adapters["default"].up.grad is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(dtype):
    model = MLP().to(dtype)
    lorad.attach(model, rank=2, targets=["*"])
    assert lorad.trainable_parameters(model)[0].dtype == torch.float32
    randomize(lorad.trainable_parameters(model), std=0.2)
    x = torch.randn(3, 9, dtype=dtype)
    model.train()
    y = model(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in lorad.trainable_parameters(model))


def test_unet_preset_on_a_tiny_unet(unet):
    names = lorad.attach(unet, rank=4, preset="unet-student")
    assert names and all(n.startswith(("down_blocks", "mid_block", "up_blocks")) for n in names)
    fake = lorad.select_targets(unet, preset="unet-fake")
    assert not any(k in n for n, _ in fake for k in ("proj_in", "proj_out", "time_emb_proj"))
    sample, t, ctx = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 3, 32)
    with torch.no_grad():
        unet(sample, t, ctx)
    with pytest.raises(ValueError, match="matched no layer"):
        lorad.attach(unet, rank=4, preset="dit-fake", adapter_name="y")


def test_keeping_the_rotated_weight_gives_the_gradients_of_recomputing_it_exactly(monkeypatch):
    from wadi_core.lorad import module

    def grads(keeps):
        monkeypatch.setattr(module, "keeps_rotated", lambda x, w: keeps)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8)).train()
        lorad.attach(model, rank=2, targets=["*"])
        randomize(lorad.trainable_parameters(model))
        x = torch.randn(32, 16, requires_grad=True)
        model(x).square().sum().backward()
        return [x.grad] + [p.grad for p in lorad.trainable_parameters(model)]

    for kept, recomputed in zip(grads(True), grads(False)):
        assert torch.equal(kept, recomputed)
