"""The LoRaD weight patch the hosts share (wadi_core.lorad.weight_patch): fp16 patch arithmetic keeps the angles
and the rotation in float32, and today's ComfyUI bypass mode either applies LoRaD exactly or refuses it.

ComfyUI 0.3.75, which installs here, has no bypass mode. ``BypassHook`` below is a stand-in of today's
``comfy/weight_adapter/bypass.py`` (``BypassForwardHook._bypass_forward``), written from reading it: an adapter
whose class overrides ``bypass_forward`` gets the call, every other one runs ``g(f(x) + h(x, f(x)))``, and the
base class's ``h`` returns zeros and ``g`` is the identity -- so an adapter that relies on the defaults is a
silent no-op, which the stand-in shows."""

from __future__ import annotations

import pytest
import torch

from wadi_core.lorad import functional as LF
from wadi_core.lorad import weight_patch
from wadi_core.lorad.io import DOWN, UP


class TodaysWeightAdapterBase:
    """Today's ComfyUI ``WeightAdapterBase`` as bypass mode sees it."""

    def h(self, x, base_out):
        return torch.zeros_like(base_out)

    def g(self, y):
        return y

    def bypass_forward(self, org_forward, x, *args, **kwargs):
        base_out = org_forward(x, *args, **kwargs)
        return self.g(base_out + self.h(x, base_out))


class BypassHook:
    def __init__(self, module, adapter, multiplier):
        self.module, self.adapter, self.original_forward = module, adapter, None
        adapter.multiplier = multiplier

    def _bypass_forward(self, x, *args, **kwargs):
        if type(self.adapter).bypass_forward is not TodaysWeightAdapterBase.bypass_forward:
            return self.adapter.bypass_forward(self.original_forward, x, *args, **kwargs)
        base_out = self.original_forward(x, *args, **kwargs)
        return self.adapter.g(base_out + self.adapter.h(x, base_out))

    def inject(self):
        self.original_forward = self.module.forward
        self.module.forward = self._bypass_forward

    def eject(self):
        self.module.forward = self.original_forward


def layer_and_file(conv=False, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Conv2d(6, 5, 3, padding=1) if conv else torch.nn.Linear(12, 7)
    flat = LF.flat_in_features(layer.weight.shape)
    up, down = torch.randn(layer.weight.shape[0], 3) * 0.5, torch.randn(3, flat // 2) * 0.5
    return layer, {f"lora_unet_x.{UP}": up, f"lora_unet_x.{DOWN}": down}


@pytest.mark.parametrize("conv", [False, True])
def test_bypass_mode_applies_the_rotation_exactly(conv):
    cls = weight_patch.on_base(TodaysWeightAdapterBase)
    layer, lora = layer_and_file(conv)
    adapter = cls.load("lora_unet_x", lora)
    x = torch.randn(2, 6, 4, 4) if conv else torch.randn(2, 12)
    merged = type(layer)(*([6, 5, 3] if conv else [12, 7]), **({"padding": 1} if conv else {}))
    merged.load_state_dict(layer.state_dict())
    with torch.no_grad():
        merged.weight.copy_(LF.rotate(layer.weight, lora[f"lora_unet_x.{UP}"], lora[f"lora_unet_x.{DOWN}"], 0.6))
    hook = BypassHook(layer, adapter, 0.6)
    before = layer.weight.detach().clone()
    hook.inject()
    with torch.no_grad():
        assert torch.allclose(layer(x), merged(x), atol=1e-5)
    hook.eject()
    assert torch.equal(layer.weight, before)  # bypass mode leaves the weight alone


def test_the_bypass_stand_in_shows_the_silent_no_op_of_the_defaults():
    class DefaultsOnly(weight_patch.LoRaDWeightPatch, TodaysWeightAdapterBase):
        bypass_forward = TodaysWeightAdapterBase.bypass_forward
        h = TodaysWeightAdapterBase.h
    layer, lora = layer_and_file()
    x = torch.randn(2, 12)
    with torch.no_grad():
        plain = layer(x)
    hook = BypassHook(layer, DefaultsOnly.load("lora_unet_x", lora), 1.0)
    hook.inject()
    with torch.no_grad():
        assert torch.equal(layer(x), plain)  # the adapter did nothing, silently


def test_bypass_mode_refuses_what_it_cannot_rotate():
    cls = weight_patch.on_base(TodaysWeightAdapterBase)
    layer, lora = layer_and_file()
    first = BypassHook(layer, cls.load("lora_unet_x", lora), 1.0)
    second = BypassHook(layer, cls.load("lora_unet_x", lora), 1.0)
    first.inject()
    second.inject()
    with pytest.raises(weight_patch.PatchError, match="non-bypass"):
        layer(torch.randn(2, 12))
    with pytest.raises(weight_patch.PatchError, match="non-bypass"):
        cls.load("lora_unet_x", lora).h(torch.randn(2, 12), torch.randn(2, 7))
    quantised = torch.nn.Linear(12, 7)
    quantised.weight = torch.nn.Parameter((quantised.weight.detach() * 100).to(torch.int8), requires_grad=False)
    hook = BypassHook(quantised, cls.load("lora_unet_x", lora), 1.0)
    hook.inject()
    with pytest.raises(weight_patch.PatchError, match="not a plain float tensor"):
        quantised(torch.randn(2, 12))


def test_fp16_patch_compute_keeps_angles_and_rotation_in_float32():
    """ComfyUI patches in ``lora_compute_dtype`` (fp16 on most GPUs). The result is the float32 rotation of the
    fp16 weight, rounded to fp16 once: at most 1 fp16 ulp from it. Casting the factors to fp16 first, as the
    patch once did, is off by many ulps."""
    torch.manual_seed(3)
    weight = (torch.randn(64, 256) * 0.05).half()
    up, down = torch.randn(64, 8) * 0.3, torch.randn(8, 128) * 0.3
    cls = weight_patch.on_base(TodaysWeightAdapterBase)
    adapter = cls.load("k", {f"k.{UP}": up, f"k.{DOWN}": down})
    got = adapter.calculate_weight(weight.clone(), "k", 0.8, 1.0, None, lambda a: a, torch.float16)
    want = LF.rotate(weight.float(), up, down, 0.8)
    ulp = torch.finfo(torch.float16).eps * want.abs().clamp_min(2 ** -14)
    assert got.dtype == torch.float16 and bool(((got.float() - want).abs() <= ulp).all())
    naive = LF.rotate(weight, up.half(), down.half(), 0.8)
    assert float(((naive.float() - want).abs() / ulp).max()) > 4


def test_strength_zero_is_exact_and_a_mismatch_names_the_key():
    cls = weight_patch.on_base(TodaysWeightAdapterBase)
    weight = torch.randn(7, 12)
    adapter = cls.load("k", {f"k.{UP}": torch.randn(7, 2), f"k.{DOWN}": torch.randn(2, 6)})
    assert torch.equal(adapter.calculate_weight(weight.clone(), "k", 0.0, 1.0, None, None), weight)
    with pytest.raises(weight_patch.PatchError, match="diffusion_model.x.weight: LoRaD angles"):
        adapter.calculate_weight(torch.randn(7, 10), "diffusion_model.x.weight", 1.0, 1.0, None, None)
    assert cls.load("other", {f"k.{UP}": torch.randn(7, 2)}) is None
