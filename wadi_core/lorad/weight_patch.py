"""LoRaD in the weight-patching interfaces of the hosts that patch weights layer by layer.

ComfyUI (``comfy.weight_adapter``) and Forge Neo (which vendors the same package) ask an adapter class for
the layers a file holds (``load``) and then for each patched weight (``calculate_weight``); ComfyUI's bypass
mode calls ``bypass_forward`` instead of touching the weight. :class:`LoRaDWeightPatch` implements those methods;
:func:`on_base` puts them on a host's own ``WeightAdapterBase`` (passed in, so this module imports no host).
A1111's and Forge's own loaders use :func:`rotation_delta` and :func:`rotate_in_place` directly.

Strength scales the angles (``R(s * theta) W``), never the delta: a rotation is not linear in its angle.
The angles and the rotation are computed in float32 whatever dtype the host patches in (fp16 in
ComfyUI's ``lora_compute_dtype``); only the result is cast back.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import functional as LF
from .io import DOWN, UP


class PatchError(ValueError):
    """A LoRaD patch that cannot be applied as asked (the message names the fix)."""


def rotation_delta(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float) -> torch.Tensor:
    """``R(strength * up @ down) W - W`` in float32 (the additive form hosts such as A1111 add to a weight)."""
    flat = LF.flat_in_features(weight.shape)
    if up.shape[0] != weight.shape[0] or down.shape[1] != flat // 2:
        raise PatchError(f"LoRaD angles up {tuple(up.shape)} / down {tuple(down.shape)} do not fit a weight of shape "
                         f"{tuple(weight.shape)}; the adapter was made for another base model")
    if strength == 0.0:
        return torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    base = weight.float()
    up, down = up.to(weight.device, torch.float32), down.to(weight.device, torch.float32)
    return LF.rotate_by_angles(base, LF.angles(up, down, strength)) - base


def rotate_in_place(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float,
                    function: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Rotate ``weight`` (a host's working copy, or a row slice of one) in place and return it; ``function``
    is the host's transform of the change (ComfyUI's ``function``, identity when None)."""
    if strength == 0.0:
        return weight
    change = rotation_delta(weight, up, down, strength)
    weight.copy_(weight.float() + (function(change) if function is not None else change))  # one rounding
    return weight


class LoRaDWeightPatch:
    """The LoRaD methods of ComfyUI's weight-adapter interface (see :func:`on_base`)."""

    name = "lorad"

    def __init__(self, loaded_keys: set[str], weights: tuple[torch.Tensor, torch.Tensor]):
        self.loaded_keys = loaded_keys
        self.weights = weights
        self.multiplier = 1.0  # set by ComfyUI's bypass hook

    @classmethod
    def load(cls, x: str, lora: dict, alpha=None, dora_scale=None, loaded_keys=None):
        """The host's loader asks every adapter class whether layer key ``x`` is in the file."""
        up_key, down_key = f"{x}.{UP}", f"{x}.{DOWN}"
        if up_key not in lora or down_key not in lora:
            return None
        return cls({up_key, down_key}, (lora[up_key], lora[down_key]))

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        """Rotate ``weight`` in place by ``strength * up @ down`` (in float32 whatever ``intermediate_dtype``)."""
        up, down = self.weights
        try:
            return rotate_in_place(weight, up, down, strength, function)
        except PatchError as error:
            raise PatchError(f"{key}: {error}") from None

    def bypass_forward(self, org_forward, x, *args, **kwargs):
        """ComfyUI's bypass mode: ``f(x) + x (R W - W)^T`` from the layer's own weight, which the hook does not
        change. A rotation needs that weight: a layer whose weight is not a plain float tensor (a quantised
        model), or a second LoRaD adapter on a layer in bypass mode (whose rotations would compose), is refused
        with the loader that works."""
        layer = getattr(org_forward, "__self__", None)
        inner = getattr(layer, "adapter", None)  # another bypass hook wraps the layer already
        if isinstance(inner, LoRaDWeightPatch):
            raise PatchError("two LoRaD adapters on one layer in bypass mode would not compose their rotations; "
                             "load them with the normal (non-bypass) LoRA loader or WaDi Load LoRaD")
        if inner is not None and isinstance(getattr(layer, "module", None), torch.nn.Module):
            layer = layer.module
        weight = getattr(layer, "weight", None)
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or not isinstance(weight, torch.Tensor) \
                or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise PatchError("a LoRaD adapter rotates the layer's weight and this layer's weight is not a plain float "
                             "tensor; load the file with the normal (non-bypass) LoRA loader or WaDi Load LoRaD")
        up, down = self.weights
        change = rotation_delta(weight.detach().to(x.device), up, down, self.multiplier).to(x.dtype)
        base = org_forward(x, *args, **kwargs)
        if isinstance(layer, torch.nn.Linear):
            return base + F.linear(x, change)
        return base + F.conv2d(x, change, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    def h(self, x, base_out):
        """Bypass mode's additive path has no meaning without the weight; :meth:`bypass_forward` is the one."""
        raise PatchError("a LoRaD adapter cannot be applied through an additive bypass path; load it with the normal "
                         "(non-bypass) LoRA loader or WaDi Load LoRaD")


_CLASSES: dict[type, type] = {}


def on_base(base: type) -> type:
    """``LoRaDWeightAdapter``: :class:`LoRaDWeightPatch` on a host's ``WeightAdapterBase`` (one class per base)."""
    if base not in _CLASSES:
        _CLASSES[base] = type("LoRaDWeightAdapter", (LoRaDWeightPatch, base), {"__module__": __name__})
    return _CLASSES[base]


def register(adapters: list, base: type) -> type:
    """Add LoRaD to a host's adapter list (idempotent); returns the class registered."""
    cls = on_base(base)
    if cls not in adapters:
        adapters.append(cls)
    return cls
