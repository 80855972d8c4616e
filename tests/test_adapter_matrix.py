"""Every adapter kind through every operation, in the spirit of PEFT's parameterised matrix: attach, save, load on
another model, apply, merge, fp32/bf16, and resume from a trainable state. One tiny UNet per case."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_unet
from wadi_core import students
from wadi_core.choices import ADAPTER_KINDS

SPECS = {kind: students.AdapterSpec(kind, 4, "unet-student") for kind in ADAPTER_KINDS}


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 900]),
            torch.randn(2, 8, 32, generator=g))


@torch.no_grad()
def out(model, dtype=torch.float32):
    x, t, cond = inputs()
    return model(x.to(dtype), t, cond.to(dtype)).sample.float()


def trained(kind: str, dtype=torch.float32):
    """A tiny UNet with an adapter of ``kind`` whose trainable values were moved off their start."""
    model = tiny_unet().to(dtype)
    params = students.add_adapter(model, SPECS[kind])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * (0.02 if kind == "full" else 0.1))
    return model.eval()


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_attach_starts_as_the_identity_and_trains_only_the_adapter(kind):
    base = tiny_unet()
    model = tiny_unet()
    params = students.add_adapter(model, SPECS[kind])
    torch.testing.assert_close(out(model.eval()), out(base), rtol=0, atol=1e-6)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    assert params and all(p.requires_grad for p in params)
    assert (trainable == total) if kind == "full" else (0 < trainable < total / 2)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_save_and_load_on_another_model_gives_the_same_output(kind, tmp_path):
    model = trained(kind)
    path = students.save_adapter_file(model, SPECS[kind], tmp_path / f"{kind}.safetensors")
    assert students.read_spec(path) == SPECS[kind] if kind != "full" else students.read_spec(path).kind == "full"
    fresh = tiny_unet()
    students.apply_adapter_file(fresh, path)
    torch.testing.assert_close(out(fresh), out(model), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in fresh.parameters())  # applied for inference


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_merge_bakes_the_adapter_into_a_plain_model(kind):
    model = trained(kind)
    plain = students.plain_model(model)
    names = {n for n, _ in plain.named_parameters()}
    assert names == {n for n, _ in tiny_unet().named_parameters()}  # no adapter left
    torch.testing.assert_close(out(plain), out(model), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_bf16_weights_give_the_fp32_output_within_bf16_precision(kind):
    full, half = trained(kind), trained(kind, torch.bfloat16)
    got, want = out(half, torch.bfloat16), out(full)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 0.05 * want.abs().max()


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_a_trainable_state_resumes_into_a_fresh_adapter(kind, tmp_path):
    model = trained(kind)
    state = students.trainable_state(model, SPECS[kind])
    fresh = tiny_unet()
    students.add_adapter(fresh, SPECS[kind])
    students.load_trainable_state(fresh, SPECS[kind], {k: v.clone() for k, v in state.items()})
    torch.testing.assert_close(out(fresh.eval()), out(model), rtol=0, atol=0)
    wrong = students.AdapterSpec(kind, 2, "unet-student") if kind != "full" else None
    if wrong is not None:  # a state of another rank is refused by name
        other = tiny_unet()
        students.add_adapter(other, wrong)
        with pytest.raises(students.AdapterError):
            students.load_trainable_state(other, wrong, state)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_the_file_records_its_kind_and_refuses_another_architecture(kind, tmp_path):
    path = students.save_adapter_file(trained(kind), SPECS[kind], tmp_path / f"{kind}.safetensors")
    assert load_file(str(path))  # a plain safetensors file
    other = tiny_unet(cross_attention_dim=48)
    with pytest.raises(students.AdapterError):
        students.apply_adapter_file(other, path)
