"""Small stand-ins of the LoRA loaders of AUTOMATIC1111, Forge and Forge Neo, which cannot be installed here.

Each holds only the part of the host that our code meets, written for these tests from reading the hosts'
sources (never copied; the repositories and commits read are listed in docs/compatibility.md):

- A1111 1.10 ``extensions-builtin/Lora``: ``NetworkWeights``/``Network``, the ``module_types`` list asked in order
  for every layer of a file (no taker: "Could not find a module type"), the LoRA module type whose
  ``finalize_updown`` multiplies the change by the prompt's weight, the diffusers -> CompVis name conversion,
  and ``network_apply_weights``: keep a backup of each weight, restore it when the wanted networks change, then
  add every network's ``calc_updown(weight)`` in prompt order (``weight.copy_(weight + updown)``).
- Forge ``backend/patcher/lora.py`` and ``extensions-builtin/sd_forge_lora/networks.py``: ``load_lora`` through
  the first collection of ``lora_collection_priority`` that has one, a file with more than 12 unmatched keys
  dropped with "LoRA version mismatch", and ``merge_lora_to_weight`` (strength_model, row offsets,
  ``"diff"``/``"lora"`` patches and ``extra_weight_calculators``).
- Forge Neo ``modules_forge/packages/comfy``: its vendored ``weight_adapter`` list asked by ``load_lora`` and
  ``calculate_weight`` called by ``merge_lora_to_weight``.

The models are diffusers UNets whose modules carry the names these hosts would give them.
"""

from __future__ import annotations

import re
import types
from collections import namedtuple

import torch

from wadi_core.models.keys import unet_name_map

# ----- AUTOMATIC1111

NetworkWeights = namedtuple("NetworkWeights", ["network_key", "sd_key", "w", "sd_module"])


class Network:
    def __init__(self, name: str, multiplier: float = 1.0):
        self.name = name
        self.te_multiplier = multiplier
        self.unet_multiplier = multiplier
        self.dyn_dim = None
        self.modules = {}


class LoraModule:
    """A1111's plain LoRA (``lora_up.weight`` / ``lora_down.weight`` / ``alpha``): ``up @ down * alpha / rank``,
    multiplied by the prompt's weight in ``finalize_updown``."""

    def __init__(self, net, weights):
        self.network, self.sd_key = net, weights.sd_key
        self.up, self.down = weights.w["lora_up.weight"], weights.w["lora_down.weight"]
        self.alpha = float(weights.w["alpha"]) if "alpha" in weights.w else None

    def multiplier(self):
        return self.network.te_multiplier if "transformer" in self.sd_key[:20] else self.network.unet_multiplier

    def finalize_updown(self, updown, orig_weight):
        scale = self.alpha / self.up.shape[1] if self.alpha is not None else 1.0
        return updown.reshape(orig_weight.shape) * scale * self.multiplier(), None

    def calc_updown(self, target):
        updown = self.up.to(target.device, target.dtype) @ self.down.to(target.device, target.dtype)
        return self.finalize_updown(updown, target)


class ModuleTypeLora:
    def create_module(self, net, weights):
        if "lora_up.weight" in weights.w and "lora_down.weight" in weights.w:
            return LoraModule(net, weights)
        return None


def diffusers_to_compvis(key: str) -> str:
    """A1111's conversion of a kohya UNet key (``lora_unet_down_blocks_0_attentions_1_...``) to the CompVis
    module name (``diffusion_model_input_blocks_2_1_...``), for SD1.x/2.x layouts of two layers per block."""
    resnets = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
               "conv_shortcut": "skip_connection"}

    def suffix(kind, rest):
        return resnets.get(rest, rest) if kind == "resnets" else rest

    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_input_blocks_{1 + block * 3 + index}_{1 if kind == 'attentions' else 0}_" \
               f"{suffix(kind, rest)}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        kind, index, rest = m[1], int(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else index * 2}_{suffix(kind, rest)}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"diffusion_model_output_blocks_{block * 3 + index}_{1 if kind == 'attentions' else 0}_" \
               f"{suffix(kind, rest)}"
    return key


def detect_version(metadata: dict) -> str:
    """A1111's ``NetworkOnDisk.detect_version``: which base the Lora card thinks a file is for (a card for another
    base than the loaded model's is hidden unless "show all" is set)."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


class A1111:
    """The Lora extension's ``networks`` module, for one diffusers UNet with A1111's layer names."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.module_types = [ModuleTypeLora()]
        self.loaded_networks: list[Network] = []
        names = unet_name_map(unet.state_dict().keys())
        self.layers = {}
        for name, module in unet.named_modules():
            if f"{name}.weight" in names:
                layer = "diffusion_model_" + names[f"{name}.weight"][: -len(".weight")].replace(".", "_")
                module.network_layer_name = layer
                self.layers[layer] = module

    def load_network(self, name: str, state: dict, multiplier: float) -> Network:
        net = Network(name, multiplier)
        matched, unmatched = {}, []
        for key, tensor in state.items():
            layer_key, part = key.split(".", 1)
            sd_key = diffusers_to_compvis(layer_key)
            module = self.layers.get(sd_key)
            if module is None:
                unmatched.append(key)
                continue
            matched.setdefault(sd_key, NetworkWeights(key, sd_key, {}, module)).w[part] = tensor
        for sd_key, weights in matched.items():
            for kind in self.module_types:
                created = kind.create_module(net, weights)
                if created is not None:
                    net.modules[sd_key] = created
                    break
            else:
                raise AssertionError("Could not find a module type (out of "
                                     f"{', '.join(type(t).__name__ for t in self.module_types)}) that would accept "
                                     f"those keys: {', '.join(weights.w)}")
        net.unmatched = unmatched
        return net

    def activate(self, networks: list[Network]) -> None:
        """What a generation with these ``<lora:...>`` in the prompt does to every layer before it runs."""
        self.loaded_networks = networks
        for module in self.layers.values():
            self.apply_weights(module)

    def apply_weights(self, layer: torch.nn.Module) -> None:
        wanted = tuple((n.name, n.te_multiplier, n.unet_multiplier) for n in self.loaded_networks)
        if getattr(layer, "network_weights_backup", None) is None:
            layer.network_weights_backup = layer.weight.detach().clone()
        if getattr(layer, "network_current_names", ()) == wanted:
            return
        with torch.no_grad():
            layer.weight.copy_(layer.network_weights_backup)
            for net in self.loaded_networks:
                module = net.modules.get(layer.network_layer_name)
                if module is None:
                    continue
                weight = layer.weight
                updown, _ = module.calc_updown(weight)
                layer.weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=layer.weight.dtype))
        layer.network_current_names = wanted


def a1111_networks_module(host: A1111) -> types.ModuleType:
    """The host as the ``networks`` module our registration finds in ``sys.modules``."""
    module = types.ModuleType("networks")
    module.module_types = host.module_types
    return module


# ----- Forge (lllyasviel)

def forge_key_map(unet: torch.nn.Module) -> dict[str, str]:
    """Forge's ``model_lora_keys_unet``: kohya key -> the model's weight name (here the diffusers names)."""
    return {"lora_unet_" + name[: -len(".weight")].replace(".", "_"): name
            for name in unet.state_dict() if name.endswith(".weight")}


class ForgeComfyCollection:
    """Forge's vendored ComfyUI loader (its own ``load_lora``): plain LoRA keys become ``("lora", ...)`` patches."""

    @staticmethod
    def load_lora(lora: dict, to_load: dict):
        patches, loaded = {}, set()
        for key, target in to_load.items():
            up, down, alpha = f"{key}.lora_up.weight", f"{key}.lora_down.weight", f"{key}.alpha"
            if up in lora and down in lora:
                patches[target] = ("lora", (lora[up], lora[down], float(lora[alpha]) if alpha in lora else None))
                loaded.update((up, down, alpha))
        return patches, {k: v for k, v in lora.items() if k not in loaded}


class Forge:
    """``backend.patcher.lora`` and the part of ``sd_forge_lora`` that applies a file to the UNet."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.original = {k: v.clone() for k, v in unet.state_dict().items()}
        self.extra_weight_calculators = {}
        self.lora_collection_priority = [types.SimpleNamespace(), ForgeComfyCollection()]  # webui's is empty
        self.printed: list[str] = []

    def load_lora(self, lora, to_load):
        collection = next(c for c in self.lora_collection_priority if hasattr(c, "load_lora"))
        return collection.load_lora(lora, to_load)

    def merge_lora_to_weight(self, patches, weight, key):
        weight = weight.to(torch.float32).clone()
        for strength, value, strength_model, offset, function in patches:
            function = function or (lambda a: a)
            whole = None
            if offset is not None:
                whole, weight = weight, weight.narrow(offset[0], offset[1], offset[2])
            if strength_model != 1.0:
                weight *= strength_model
            patch_type, value = ("diff", value) if len(value) == 1 else value
            if patch_type == "diff":
                weight += function(strength * value[0].to(weight.dtype))
            elif patch_type == "lora":
                up, down, alpha = value
                scale = alpha / down.shape[0] if alpha is not None else 1.0
                weight += function((strength * scale) * (up.float() @ down.float())).to(weight.dtype)
            elif patch_type in self.extra_weight_calculators:
                weight = self.extra_weight_calculators[patch_type](weight, strength, value)
            else:
                self.printed.append(f"patch type not recognized {patch_type} {key}")
            if whole is not None:
                weight = whole
        return weight

    def apply(self, files: list[tuple[dict, float]]) -> None:
        """Restore the model, then apply each ``(state dict, strength)`` as ``<lora:...>`` does."""
        self.unet.load_state_dict(self.original)
        all_patches: dict[str, list] = {}
        for lora, strength in files:
            to_load = forge_key_map(self.unet)
            patches, unmatched = self.load_lora(lora, to_load)
            if len(unmatched) > 12:
                self.printed.append("[LORA] LoRA version mismatch")
                continue
            for target, value in patches.items():
                all_patches.setdefault(target, []).append([strength, value, 1.0, None, None])
        state = self.unet.state_dict()
        with torch.no_grad():
            for key, patches in all_patches.items():
                state[key].copy_(self.merge_lora_to_weight(patches, state[key], key).to(state[key].dtype))


# ----- Forge Neo (its vendored ComfyUI weight_adapter)

class NeoWeightAdapterBase:
    name = "base"

    @classmethod
    def load(cls, x, lora, alpha, dora_scale, loaded_keys=None):
        raise NotImplementedError

    def calculate_weight(self, weight, key, strength, strength_model, offset, function, intermediate_dtype=torch.float32,
                         original_weight=None):
        raise NotImplementedError


class ForgeNeo:
    """``modules_forge.packages.comfy``: ``weight_adapter.adapters`` and the loader and merge that use it."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.original = {k: v.clone() for k, v in unet.state_dict().items()}
        self.adapters: list[type] = []

    def modules(self) -> dict[str, types.ModuleType]:
        """The vendored package as ``sys.modules`` entries, for our registration to find."""
        package = types.ModuleType("modules_forge.packages.comfy.weight_adapter")
        package.adapters = self.adapters
        base = types.ModuleType("modules_forge.packages.comfy.weight_adapter.base")
        base.WeightAdapterBase = NeoWeightAdapterBase
        package.base = base
        names = ["modules_forge", "modules_forge.packages", "modules_forge.packages.comfy"]
        found = {name: types.ModuleType(name) for name in names}
        found["modules_forge.packages.comfy"].weight_adapter = package
        return {**found, package.__name__: package, base.__name__: base}

    def apply(self, files: list[tuple[dict, float]]) -> int:
        """Restore, then patch with every adapter the list recognises; returns the number of layers patched."""
        self.unet.load_state_dict(self.original)
        state = self.unet.state_dict()
        patched = 0
        for lora, strength in files:
            for key, target in forge_key_map(self.unet).items():
                for cls in self.adapters:
                    adapter = cls.load(key, lora, None, None, set())
                    if adapter is None:
                        continue
                    with torch.no_grad():
                        weight = state[target].float().clone()
                        weight = adapter.calculate_weight(weight, target, strength, 1.0, None, None, torch.float32)
                        state[target].copy_(weight.to(state[target].dtype))
                    patched += 1
        return patched
