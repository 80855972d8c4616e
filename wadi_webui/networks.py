"""LoRaD files in the prompt of AUTOMATIC1111, Forge and Forge Neo: ``<lora:wadi_student:1>``.

Each host has its own LoRA loader, and :func:`register` teaches the running one the LoRaD keys
(``lora_unet_<layer>.lorad_up`` / ``.lorad_down``):

- **AUTOMATIC1111** (built-in Lora extension): a module type in ``networks.module_types``. Its
  ``calc_updown`` returns ``R(w * theta) W - W``: the prompt's weight ``w`` scales the angles, and the
  module never calls ``finalize_updown``, which would multiply that change by ``w`` a second time.
  A1111 keeps the original weights and restores them when the file leaves the prompt.
- **Forge** (lllyasviel): a ``"lorad"`` weight calculator in ``backend.patcher.lora.extra_weight_calculators``
  and a loader placed first in its ``lora_collection_priority`` that turns the LoRaD layers of a file into
  ``("lorad", (up, down))`` patches and hands every other key to Forge's own loader.
- **Forge Neo**: the library's weight-adapter class on Neo's vendored ``weight_adapter`` package, added to its
  adapter list (the same class the ComfyUI pack registers with ComfyUI).

The rotations are computed in float32 by :mod:`wadi_core.lorad.weight_patch`.
"""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn.functional as F

from wadi_core.lorad import weight_patch
from wadi_core.lorad.io import DOWN, UP

log = logging.getLogger("wadi")


# ----- AUTOMATIC1111

class ModuleTypeLoRaD:
    """A1111's ``ModuleType``: claims the layers whose weights are a LoRaD pair."""

    def create_module(self, net, weights):
        if UP in weights.w and DOWN in weights.w:
            return NetworkModuleLoRaD(net, weights)
        return None


class NetworkModuleLoRaD:
    """A1111's ``NetworkModule`` for one LoRaD layer (the attributes A1111 and its extensions read)."""

    def __init__(self, net, weights):
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        self.shape = getattr(getattr(self.sd_module, "weight", None), "shape", None)
        self.up, self.down = weights.w[UP], weights.w[DOWN]
        self.dim = self.up.shape[1]
        self.alpha = self.scale = self.bias = self.dora_scale = None

    def multiplier(self) -> float:
        """The prompt's weight for this layer (A1111's rule: text-encoder layers take the first number, UNet
        layers the second, which defaults to the first)."""
        if "transformer" in self.sd_key[:20]:
            return self.network.te_multiplier
        unet = self.network.unet_multiplier
        return unet[0] if isinstance(unet, (list, tuple)) else unet

    def calc_scale(self) -> float:
        return 1.0

    def calc_updown(self, target: torch.Tensor):
        """``(R(w * up @ down) W - W, no extra bias)`` in float32; ``target`` is not modified."""
        return weight_patch.rotation_delta(target, self.up, self.down, self.multiplier()), None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A1111's "functional" LoRA mode (``lora_functional``): add this layer's change to its output."""
        change = weight_patch.rotation_delta(self.sd_module.weight, self.up, self.down, self.multiplier())
        change = change.to(x.device, x.dtype)
        if isinstance(self.sd_module, torch.nn.Conv2d):
            m = self.sd_module
            return y + F.conv2d(x, change, None, m.stride, m.padding, m.dilation, m.groups)
        return y + F.linear(x, change)


def register_a1111(networks) -> bool:
    """Put the LoRaD module type first in A1111's ``networks.module_types`` (idempotent)."""
    types = getattr(networks, "module_types", None)
    if not isinstance(types, list):
        return False
    if not any(isinstance(t, ModuleTypeLoRaD) for t in types):
        types.insert(0, ModuleTypeLoRaD())
    return True


# ----- Forge

def forge_weight(weight: torch.Tensor, strength: float, value) -> torch.Tensor:
    """Forge's ``extra_weight_calculators`` signature: rotate ``weight`` (Forge's working copy, or a slice of it)
    in place by ``strength * up @ down``."""
    up, down = value
    return weight_patch.rotate_in_place(weight, up, down, strength)


class ForgeLoRaDLoader:
    """First in Forge's ``lora_collection_priority``: LoRaD layers become ``("lorad", (up, down))`` patches, every
    other key goes to the next collection's ``load_lora``."""

    def __init__(self, priority: list):
        self._priority = priority

    def load_lora(self, lora: dict, to_load: dict):
        patches, taken = {}, set()
        for key, target in to_load.items():
            up, down = f"{key}.{UP}", f"{key}.{DOWN}"
            if up in lora and down in lora:
                patches[target] = ("lorad", (lora[up], lora[down]))
                taken.update((up, down))
        rest = {k: v for k, v in lora.items() if k not in taken}
        others = next((c for c in self._priority if c is not self and hasattr(c, "load_lora")), None)
        if others is None:
            return patches, rest
        more, remaining = others.load_lora(rest, to_load)
        return {**more, **patches}, remaining


def register_forge(forge_lora) -> bool:
    """Add the LoRaD calculator and loader to Forge's ``backend.patcher.lora`` (idempotent)."""
    calculators = getattr(forge_lora, "extra_weight_calculators", None)
    priority = getattr(forge_lora, "lora_collection_priority", None)
    if not isinstance(calculators, dict) or not isinstance(priority, list):
        return False
    calculators["lorad"] = forge_weight
    if not any(isinstance(c, ForgeLoRaDLoader) for c in priority):
        priority.insert(0, ForgeLoRaDLoader(priority))
    return True


# ----- the running host

def register() -> str | None:
    """Teach the running host's LoRA loader the LoRaD keys; returns "forge-neo", "forge", "a1111" or None (no
    LoRA loader found: then ``<lora:...>`` cannot use LoRaD files, the WaDi tab still works)."""
    try:
        from modules_forge.packages.comfy import weight_adapter
        from modules_forge.packages.comfy.weight_adapter.base import WeightAdapterBase
    except ImportError:
        pass
    else:
        weight_patch.register(weight_adapter.adapters, WeightAdapterBase)
        return "forge-neo"
    try:
        import backend.patcher.lora as forge_lora
    except ImportError:
        pass
    else:
        if register_forge(forge_lora):
            return "forge"
    networks = sys.modules.get("networks")  # A1111's built-in Lora extension, loaded before other extensions
    if networks is not None and register_a1111(networks):
        return "a1111"
    return None
