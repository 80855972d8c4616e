"""LoRaD as a ComfyUI weight patch.

ComfyUI (>= 0.3.29) patches weights through ``comfy.weight_adapter`` objects: ``ModelPatcher``
calls ``calculate_weight`` when it loads or offloads a layer, so lowvram and offloading work with
any adapter type. ``LoRaDWeightAdapter`` (see :func:`adapter_class`) rotates the rows it is given
by ``strength * up @ down`` (the spec's W' = R(theta) W) and keeps no full-size delta. Registered in ComfyUI's adapter list,
it also lets the stock LoraLoader nodes read LoRaD files. On an older ComfyUI without that module
the pack falls back to a plain additive patch (the delta computed once per layer).
"""

from __future__ import annotations

import logging

import torch

from wadi_core.lorad import functional as LF
from wadi_core.lorad.io import DOWN, UP

log = logging.getLogger("wadi")


class LoRaDPatch:
    """The LoRaD methods of ComfyUI's weight-adapter interface (see :func:`adapter_class`)."""

    name = "lorad"

    def __init__(self, loaded_keys: set[str], weights: tuple[torch.Tensor, torch.Tensor]):
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def load(cls, x: str, lora: dict, alpha=None, dora_scale=None, loaded_keys=None):
        """ComfyUI's loader asks every adapter class whether layer key ``x`` is in the file."""
        up_key, down_key = f"{x}.{UP}", f"{x}.{DOWN}"
        if up_key not in lora or down_key not in lora:
            return None
        return cls({up_key, down_key}, (lora[up_key], lora[down_key]))

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        """Rotate ``weight`` (a float copy, or a row slice of one when ComfyUI gives an offset) in place."""
        if strength == 0.0:
            return weight
        up, down = (t.to(weight.device, intermediate_dtype) for t in self.weights)
        theta = LF.angles(up, down, strength)
        if theta.shape != (weight.shape[0], LF.flat_in_features(weight.shape) // 2):
            log.error("WaDi: LoRaD angles %s do not fit the weight %s of %s; layer left unchanged",
                      tuple(theta.shape), tuple(weight.shape), key)
            return weight
        rotated = LF.rotate_by_angles(weight, theta)
        weight += function((rotated - weight).to(weight.dtype))
        return weight


_ADAPTER_CLASS: type | None = None


def adapter_class() -> type | None:
    """``LoRaDWeightAdapter``: :class:`LoRaDPatch` on this ComfyUI's ``WeightAdapterBase``, built on first
    use (the pack may be imported before ComfyUI is); ``None`` on a ComfyUI without weight adapters."""
    global _ADAPTER_CLASS
    if _ADAPTER_CLASS is None:
        try:
            from comfy.weight_adapter.base import WeightAdapterBase
        except ImportError:  # ComfyUI before 0.3.29
            return None
        _ADAPTER_CLASS = type("LoRaDWeightAdapter", (LoRaDPatch, WeightAdapterBase), {"__module__": __name__})
    return _ADAPTER_CLASS


def additive_patch(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float) -> tuple:
    """The pre-0.3.29 fallback: ComfyUI's ("diff", (delta,)) patch of the rotation at ``strength``
    (a rotation is not linear in its angle, so the patch itself must be added at strength 1)."""
    return ("diff", (LF.delta(weight.float(), up, down, strength),))


def register_with_comfy() -> bool:
    """Add LoRaD to ComfyUI's adapter list (so LoraLoader reads LoRaD files); False where there is none."""
    try:
        import comfy.weight_adapter as weight_adapter
    except ImportError:
        return False
    adapters = getattr(weight_adapter, "adapters", None)
    cls = adapter_class()
    if not isinstance(adapters, list) or cls is None:
        return False
    if cls not in adapters:
        adapters.append(cls)
    return True
