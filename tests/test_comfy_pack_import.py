"""The pack loads on ComfyUIs without ``comfy_api`` (V3) or without the weight-adapter list
(before 0.3.29): a minimal fake ``comfy`` package, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_LORA = '''
def model_lora_keys_unet(model, key_map={}):
    for k in model.state_dict():
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
    return key_map
'''

CHECK = '''
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("wadi_pack", r"{root}/__init__.py",
                                              submodule_search_locations=[r"{root}"])
pack = importlib.util.module_from_spec(spec)
sys.modules["wadi_pack"] = pack
spec.loader.exec_module(pack)
assert set(pack.NODE_CLASS_MAPPINGS) >= {{"WaDiLoadLoRaD", "WaDiOneStepSampler", "WaDiOneStepSigmas"}}
assert not hasattr(pack, "comfy_entrypoint")            # no comfy_api here
from wadi_comfy.adapter import adapter_class, register_with_comfy
assert adapter_class() is None and register_with_comfy() is False

# the loader falls back to additive patches of the rotation at the requested strength
from wadi_comfy.patching import lorad_patches
from wadi_core.lorad import functional as LF
from wadi_core.lorad.io import AdapterFile

class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.diffusion_model = torch.nn.Module()
        self.diffusion_model.proj = torch.nn.Linear(6, 3)

class Patcher:
    model = Model()

up, down = torch.randn(3, 2), torch.randn(2, 3)
adapter = AdapterFile(None, {{"lora_unet_proj": (up, down)}})
patches, strength = lorad_patches(Patcher(), adapter, 0.5)
weight = Patcher.model.diffusion_model.proj.weight.detach()
kind, (delta,) = patches["diffusion_model.proj.weight"]
assert kind == "diff" and strength == 1.0
torch.testing.assert_close(weight + delta, LF.rotate(weight, up, down, 0.5))
print("ok")
'''


def test_pack_imports_without_v3_api_or_weight_adapters(tmp_path):
    fake = tmp_path / "fake_comfyui" / "comfy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "lora.py").write_text(FAKE_LORA)
    result = subprocess.run([sys.executable, "-c", CHECK.format(root=ROOT)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(fake.parent), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
