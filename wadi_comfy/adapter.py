"""LoRaD as a ComfyUI weight patch.

ComfyUI (>= 0.3.29) patches weights through ``comfy.weight_adapter`` objects: ``ModelPatcher``
calls ``calculate_weight`` when it loads or offloads a layer, so lowvram and offloading work with
any adapter type. ``LoRaDWeightAdapter`` (see :func:`adapter_class`, the library's
:class:`~wadi_core.lorad.weight_patch.LoRaDWeightPatch` on ComfyUI's base class) rotates the rows it is given
by ``strength * up @ down`` (the spec's W' = R(theta) W) in float32 and keeps no full-size delta; in ComfyUI's
bypass mode it adds ``x (R W - W)^T`` to the layer's output. Registered in ComfyUI's adapter list, it also lets
the stock LoraLoader nodes read LoRaD files. On an older ComfyUI without that module the pack falls back to a
plain additive patch (the delta computed once per layer).
"""

from __future__ import annotations

import torch

from wadi_core.lorad import weight_patch


def adapter_class() -> type | None:
    """``LoRaDWeightAdapter`` on this ComfyUI's ``WeightAdapterBase`` (built on first use: the pack may be
    imported before ComfyUI is); ``None`` on a ComfyUI without weight adapters."""
    try:
        from comfy.weight_adapter.base import WeightAdapterBase
    except ImportError:  # ComfyUI before 0.3.29
        return None
    return weight_patch.on_base(WeightAdapterBase)


def additive_patch(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float) -> tuple:
    """The pre-0.3.29 fallback: ComfyUI's ("diff", (delta,)) patch of the rotation at ``strength``
    (a rotation is not linear in its angle, so the patch itself must be added at strength 1)."""
    return ("diff", (weight_patch.rotation_delta(weight, up, down, strength),))


def register_with_comfy() -> bool:
    """Add LoRaD to ComfyUI's adapter list (so LoraLoader reads LoRaD files); False where there is none."""
    try:
        import comfy.weight_adapter as weight_adapter
        from comfy.weight_adapter.base import WeightAdapterBase
    except ImportError:
        return False
    adapters = getattr(weight_adapter, "adapters", None)
    if not isinstance(adapters, list):
        return False
    weight_patch.register(adapters, WeightAdapterBase)
    return True
