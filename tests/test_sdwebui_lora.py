"""LoRaD in ``<lora:name:w>`` prompts of AUTOMATIC1111, Forge and Forge Neo, through stand-ins of their LoRA
loaders (tests/sdwebui_standins.py): the result equals ``wadi merge`` at the same strength, strength 0 changes
nothing, a plain LoRA stacks with it, removing it restores the weights exactly, and each stand-in rejects the
wrong implementations (the change scaled linearly by the weight, the weight rotated in place, no registration)."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import randomize, write_sd_folder
from sdwebui_standins import A1111, Forge, ForgeNeo, a1111_networks_module, detect_version
from wadi_cli.cli import main
from wadi_core import lorad
from wadi_core.lorad import functional as LF
from wadi_core.models import load_components
from wadi_webui import networks


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SD folder, a random LoRaD adapter for its UNet, a plain LoRA on three of its Linear layers, and the
    UNet ``wadi merge`` makes at strengths 1 and 0.5."""
    root = tmp_path_factory.mktemp("sdwebui")
    base = write_sd_folder(root / "base")
    unet = load_components(base).unet
    lorad.attach(unet, rank=4, preset="unet-student")
    randomize(lorad.trainable_parameters(unet), std=0.3)
    adapter = lorad.save_adapter(unet, root / "wadi_student.safetensors", preset="unet-student")
    g = torch.Generator().manual_seed(7)
    lora = {}
    plain = load_components(base).unet
    for name in ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                 "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2", "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"]:
        weight = plain.get_submodule(name).weight
        key = "lora_unet_" + name.replace(".", "_")
        lora[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], 2, generator=g) * 0.05
        lora[f"{key}.lora_down.weight"] = torch.randn(2, weight.shape[1], generator=g) * 0.05
        lora[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(lora, str(root / "style.safetensors"))
    merged = {}
    for strength in (1.0, 0.5):
        out = root / f"merged-{strength}"
        assert main(["merge", "--model", str(base), "--adapter", f"{adapter}:{strength}", "--out", str(out),
                     "--quiet"]) == 0
        merged[strength] = load_components(out).unet.state_dict()
    return {"base": base, "adapter": load_file(str(adapter)), "lora": lora, "merged": merged}


def fresh_unet(files):
    return load_components(files["base"]).unet


def close(state, want, tolerance=1e-5) -> bool:
    return all(torch.allclose(state[k], want[k], rtol=tolerance, atol=tolerance) for k in want)


def with_lora(state: dict, lora: dict, strength: float) -> dict:
    """``state`` plus the plain LoRA at ``strength`` (``W + w * up @ down * alpha / rank``)."""
    out = {k: v.clone() for k, v in state.items()}
    for key in {k.split(".", 1)[0] for k in lora}:
        name = key[len("lora_unet_"):]
        target = next(k for k in out if k.endswith(".weight") and k[: -len(".weight")].replace(".", "_") == name)
        up, down = lora[f"{key}.lora_up.weight"], lora[f"{key}.lora_down.weight"]
        out[target] += strength * float(lora[f"{key}.alpha"]) / up.shape[1] * (up @ down)
    return out


# ----- AUTOMATIC1111

@pytest.fixture
def a1111(files, monkeypatch):
    host = A1111(fresh_unet(files))
    monkeypatch.setitem(sys.modules, "networks", a1111_networks_module(host))
    for name in ("modules_forge", "backend", "backend.patcher", "backend.patcher.lora"):
        monkeypatch.setitem(sys.modules, name, None)  # not Forge: its imports fail
    assert networks.register() == "a1111"
    return host


def test_a1111_without_the_module_type_refuses_the_file_as_reported(files):
    host = A1111(fresh_unet(files))
    with pytest.raises(AssertionError, match="Could not find a module type"):
        host.load_network("wadi_student", files["adapter"], 1.0)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a1111_prompt_weight_equals_wadi_merge(a1111, files, strength):
    net = a1111.load_network("wadi_student", files["adapter"], strength)
    assert len(net.modules) == len(files["adapter"]) // 2 and not net.unmatched
    a1111.activate([net])
    assert close(a1111.unet.state_dict(), files["merged"][strength])


def test_a1111_weight_zero_is_identity_and_removing_restores_exactly(a1111, files):
    original = {k: v.clone() for k, v in a1111.unet.state_dict().items()}
    a1111.activate([a1111.load_network("wadi_student", files["adapter"], 0.0)])
    assert all(torch.equal(v, original[k]) for k, v in a1111.unet.state_dict().items())
    a1111.activate([a1111.load_network("wadi_student", files["adapter"], 1.0)])
    assert not close(a1111.unet.state_dict(), original)
    a1111.activate([])
    assert all(torch.equal(v, original[k]) for k, v in a1111.unet.state_dict().items())


def test_a1111_stacks_with_a_plain_lora_in_prompt_order(a1111, files):
    student = a1111.load_network("wadi_student", files["adapter"], 1.0)
    style = a1111.load_network("style", files["lora"], 0.8)
    a1111.activate([student, style])  # <lora:wadi_student:1> <lora:style:0.8>
    assert close(a1111.unet.state_dict(), with_lora(files["merged"][1.0], files["lora"], 0.8))


class LinearInTheWeight(networks.NetworkModuleLoRaD):
    """Wrong: the change at weight 1, then scaled by the weight as A1111's finalize_updown does for a LoRA."""

    def calc_updown(self, target):
        from wadi_core.lorad import weight_patch
        return weight_patch.rotation_delta(target, self.up, self.down, 1.0) * self.multiplier(), None


class RotatesInPlace(networks.NetworkModuleLoRaD):
    """Wrong: rotates the layer's weight itself and returns the change as well."""

    def calc_updown(self, target):
        change, _ = super().calc_updown(target)
        target += change.to(target.dtype)
        return change, None


@pytest.mark.parametrize("wrong", [LinearInTheWeight, RotatesInPlace])
def test_the_a1111_stand_in_rejects_a_wrong_module(files, wrong, monkeypatch):
    host = A1111(fresh_unet(files))

    class WrongType:
        def create_module(self, net, weights):
            return wrong(net, weights) if networks.UP in weights.w else None
    host.module_types.insert(0, WrongType())
    host.activate([host.load_network("wadi_student", files["adapter"], 0.5)])
    assert not close(host.unet.state_dict(), files["merged"][0.5], tolerance=1e-3)


def test_a1111_functional_mode_adds_the_change_to_the_layer_output(a1111, files):
    net = a1111.load_network("wadi_student", files["adapter"], 0.5)
    sd_key, module = next(iter(net.modules.items()))
    layer = a1111.layers[sd_key]
    x = torch.randn(3, layer.weight.shape[1])
    rotated = LF.rotate(layer.weight.detach(), module.up, module.down, 0.5)
    assert torch.allclose(module.forward(x, layer(x)), torch.nn.functional.linear(x, rotated, layer.bias),
                          atol=1e-5)


def test_a1111_s_lora_card_files_each_adapter_under_its_base():
    from wadi_core.lorad.io import adapter_metadata
    assert detect_version(adapter_metadata("sd15", 8, "unet-student", "lora_unet", 10)) == "SD1"
    assert detect_version(adapter_metadata("sd21", 8, "unet-student", "lora_unet", 10)) == "SD2"
    assert detect_version(adapter_metadata("sdxl", 8, "unet-student", "lora_unet", 10)) == "SDXL"


# ----- Forge

@pytest.fixture
def forge(files, monkeypatch):
    host = Forge(fresh_unet(files))
    monkeypatch.setitem(sys.modules, "modules_forge", None)  # not Forge Neo
    package = type(sys)("backend.patcher.lora")
    package.extra_weight_calculators = host.extra_weight_calculators
    package.lora_collection_priority = host.lora_collection_priority
    monkeypatch.setitem(sys.modules, "backend", type(sys)("backend"))
    monkeypatch.setitem(sys.modules, "backend.patcher", type(sys)("backend.patcher"))
    monkeypatch.setitem(sys.modules, "backend.patcher.lora", package)
    sys.modules["backend"].patcher = sys.modules["backend.patcher"]
    sys.modules["backend.patcher"].lora = package
    assert networks.register() == "forge"
    return host


def test_forge_without_registration_drops_the_file_as_reported(files):
    host = Forge(fresh_unet(files))
    host.apply([(files["adapter"], 1.0)])
    assert "[LORA] LoRA version mismatch" in host.printed
    assert all(torch.equal(v, host.original[k]) for k, v in host.unet.state_dict().items())


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_forge_prompt_weight_equals_wadi_merge(forge, files, strength):
    forge.apply([(files["adapter"], strength)])
    assert not forge.printed and close(forge.unet.state_dict(), files["merged"][strength])


def test_forge_weight_zero_is_identity_stacks_with_a_lora_and_restores(forge, files):
    forge.apply([(files["adapter"], 0.0)])
    assert all(torch.equal(v, forge.original[k]) for k, v in forge.unet.state_dict().items())
    forge.apply([(files["adapter"], 1.0), (files["lora"], 0.8)])
    assert close(forge.unet.state_dict(), with_lora(files["merged"][1.0], files["lora"], 0.8))
    forge.apply([])
    assert all(torch.equal(v, forge.original[k]) for k, v in forge.unet.state_dict().items())


def test_the_forge_stand_in_rejects_a_linear_calculator(forge, files):
    def linear(weight, strength, value):  # wrong: the rotation at 1, scaled like a LoRA
        up, down = value
        weight += strength * LF.delta(weight, up, down, 1.0)
        return weight
    forge.extra_weight_calculators["lorad"] = linear
    forge.apply([(files["adapter"], 0.5)])
    assert not close(forge.unet.state_dict(), files["merged"][0.5], tolerance=1e-3)


def test_forge_applies_a_row_slice_in_place(files):
    """Forge narrows a fused weight to the rows a key owns and keeps the whole tensor: the calculator must
    change the slice in place."""
    weight = torch.randn(12, 8)
    up, down = torch.randn(4, 2), torch.randn(2, 4)
    whole = weight.clone()
    result = networks.forge_weight(whole.narrow(0, 4, 4), 0.7, (up, down))
    assert result.data_ptr() == whole[4:8].data_ptr()
    assert torch.allclose(whole[4:8], LF.rotate(weight[4:8], up, down, 0.7), atol=1e-6)
    assert torch.equal(whole[:4], weight[:4]) and torch.equal(whole[8:], weight[8:])


# ----- Forge Neo

def test_forge_neo_loads_lorad_through_its_weight_adapter_list(files, monkeypatch):
    host = ForgeNeo(fresh_unet(files))
    assert host.apply([(files["adapter"], 1.0)]) == 0  # not registered: nothing recognised
    for name, module in host.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    assert networks.register() == "forge-neo" and len(host.adapters) == 1
    assert networks.register() == "forge-neo" and len(host.adapters) == 1  # idempotent
    for strength in (1.0, 0.5):
        assert host.apply([(files["adapter"], strength)]) == len(files["adapter"]) // 2
        assert close(host.unet.state_dict(), files["merged"][strength])
    host.apply([(files["adapter"], 0.0)])
    assert all(torch.equal(v, host.original[k]) for k, v in host.unet.state_dict().items())


def test_an_sdxl_lorad_file_finds_every_layer_of_sdxl_in_a1111_and_forge(tmp_path, monkeypatch):
    """An SDXL LoRaD (every unet-student layer) on SDXL's UNet built on the meta device: A1111's key conversion and
    our module type take every key, and every key is in Forge's key map."""
    from comfy_support import random_lorad
    from sdwebui_standins import forge_key_map
    from wadi_core.models.families import build_on_meta

    state = load_file(str(random_lorad(tmp_path / "sdxl.safetensors", family="sdxl")))
    host = A1111(build_on_meta("sdxl"))
    monkeypatch.setitem(sys.modules, "networks", a1111_networks_module(host))
    for name in ("modules_forge", "backend", "backend.patcher", "backend.patcher.lora"):
        monkeypatch.setitem(sys.modules, name, None)
    assert networks.register() == "a1111"
    net = host.load_network("sdxl", state, 1.0)
    assert not net.unmatched and len(net.modules) == 739
    layers = {key.split(".", 1)[0] for key in state}
    assert layers <= set(forge_key_map(build_on_meta("sdxl")))
