"""Attach LoRaD adapters to any torch model and train, merge, unmerge or detach them.

Target layers keep their class and their parameter names (``to_q.weight`` stays
``to_q.weight``), so the model still saves and loads like the original. Each adapted layer gets
a ``lorad_adapters`` ModuleDict (one :class:`LoRaDAdapter` per adapter name) and an instance
``forward`` that computes the rotated weight once per call.

For ``nn.Linear`` the training forward is a custom autograd function. When the layer's input is smaller than
its weight (few tokens, a wide layer) it keeps only the input, the base weight and the small adapter matrices
for backward and recomputes the rotated weight there, instead of saving a second full-size weight; otherwise
the input already costs more than the weight, and the rotated weight is kept to spare backward the rotation
(at most doubling what the layer keeps). The authors' code instead runs every layer twice through a forward hook.
"""

from __future__ import annotations

import math

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as LF
from .presets import INSIDE_ADAPTER, select_targets

ADAPTERS_ATTR = "lorad_adapters"
DEFAULT_ADAPTER = "default"


class LoRaDAdapter(nn.Module):
    """The trainable pair ``up [out, r]`` and ``down [r, in//2]`` of one layer (float32)."""

    def __init__(self, out_features: int, half_in: int, rank: int, strength: float = 1.0,
                 device=None, dtype=torch.float32):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRaD rank must be a positive integer, got {rank}")
        if half_in <= 0:
            raise ValueError("LoRaD needs at least two input features to rotate a pair")
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.down = nn.Parameter(torch.empty(rank, half_in, device=device, dtype=dtype))
        nn.init.xavier_uniform_(self.down)  # with up = 0 the layer starts as the identity
        self.strength = float(strength)
        self.merged = False

    @property
    def rank(self) -> int:
        return self.up.shape[1]

    def extra_repr(self) -> str:
        return f"rank={self.rank}, strength={self.strength}, merged={self.merged}"


class _RotatedLinearFn(torch.autograd.Function):
    """``y = x @ rotate(W, sum_i s_i up_i down_i).T + b``; backward recomputes the rotation unless the input
    is at least the weight's size (then the rotated weight is kept, see the module's docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, strengths, *factors):
        compute_dtype = (torch.get_autocast_dtype(x.device.type)
                         if torch.is_autocast_enabled(x.device.type) else x.dtype)
        theta = _theta(strengths, factors)
        rotated = LF.rotate_by_angles(weight, theta).to(compute_dtype)
        y = F.linear(x.to(compute_dtype), rotated, None if bias is None else bias.to(compute_dtype))
        ctx.strengths = strengths
        ctx.compute_dtype = compute_dtype
        ctx.save_for_backward(x, weight, bias, rotated if keeps_rotated(x, weight) else None, *factors)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, rotated, *factors = ctx.saved_tensors
        strengths, cdt = ctx.strengths, ctx.compute_dtype
        needs = ctx.needs_input_grad
        theta = _theta(strengths, factors) if needs[1] or rotated is None else None
        if rotated is None:  # not kept by forward: rotate again
            rotated = LF.rotate_by_angles(weight, theta).to(cdt)
        grad_y = grad_y.to(cdt)

        grad_x = (grad_y @ rotated).to(x.dtype) if needs[0] else None
        grad_bias = None
        if bias is not None and needs[2]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0).to(bias.dtype)

        grad_weight = None
        grad_factors = [None] * len(factors)
        if needs[1] or any(needs[4:]):
            g_rot = grad_y.reshape(-1, grad_y.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(cdt)
            if any(needs[4:]):
                d_phi = LF.rotation_angle_grad(rotated, g_rot)
                for i, s in enumerate(strengths):
                    up, down = factors[2 * i], factors[2 * i + 1]
                    d_theta = d_phi * s
                    if needs[4 + 2 * i]:
                        grad_factors[2 * i] = (d_theta @ down.to(d_theta.dtype).t()).to(up.dtype)
                    if needs[5 + 2 * i]:
                        grad_factors[2 * i + 1] = (up.to(d_theta.dtype).t() @ d_theta).to(down.dtype)
            if needs[1]:
                # W' = W R^T pairwise, so dL/dW is G rotated by the opposite angles.
                neg = None if theta is None else -theta
                grad_weight = LF.rotate_by_angles(g_rot, neg).to(weight.dtype)
        return (grad_x, grad_weight, grad_bias, None, *grad_factors)


def keeps_rotated(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a training forward keeps ``W'`` for backward: when the input (kept anyway) is at least as large."""
    return x.numel() >= weight.numel()


def _theta(strengths, factors):
    return LF.summed_angles(
        (factors[2 * i], factors[2 * i + 1], s) for i, s in enumerate(strengths)
    )


ONLY_ATTR = "_lorad_only"  # a set of adapter names: only those act (see only_adapters); absent: all act


def _active(module: nn.Module) -> list[LoRaDAdapter]:
    only = module.__dict__.get(ONLY_ATTR)
    return [a for name, a in getattr(module, ADAPTERS_ATTR).items()
            if not a.merged and a.strength != 0.0 and (only is None or name in only)]


def only_adapters(layers: Sequence[nn.Module], names: Sequence[str] | None) -> None:
    """Let only the adapters ``names`` act in these LoRaD layers (``()``: none; None: all again). Nothing is
    detached or frozen: the other adapters keep their weights and trainability."""
    for layer in layers:
        if names is None:
            layer.__dict__.pop(ONLY_ATTR, None)
        else:
            layer.__dict__[ONLY_ATTR] = frozenset(names)


def _needs_grad(module: nn.Module, active: Sequence[LoRaDAdapter]) -> bool:
    if not torch.is_grad_enabled():
        return False
    params = [module.weight] + [p for a in active for p in (a.up, a.down)]
    return any(p.requires_grad for p in params)


def _cached_rotated_weight(module: nn.Module, active: Sequence[LoRaDAdapter], dtype) -> torch.Tensor:
    """Eval-time cache of ``W'``; invalidated by any in-place change of weight or adapters."""
    key = (module.weight._version, module.weight.data_ptr(), dtype,
           tuple((id(a), a.strength, a.up._version, a.down._version) for a in active))
    cache = module.__dict__.get("_lorad_cache")
    if cache is None or cache[0] != key:
        theta = LF.summed_angles((a.up, a.down, a.strength) for a in active)
        rotated = LF.rotate_by_angles(module.weight.detach(), theta).to(dtype)
        module.__dict__["_lorad_cache"] = cache = (key, rotated)
    return cache[1]


def _linear_forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    active = _active(module)
    if not active:
        return F.linear(x, module.weight, module.bias)
    if not module.training and not _needs_grad(module, active):
        dtype = (torch.get_autocast_dtype(x.device.type)
                 if torch.is_autocast_enabled(x.device.type) else x.dtype)
        w = _cached_rotated_weight(module, active, dtype)
        return F.linear(x.to(dtype), w, None if module.bias is None else module.bias.to(dtype))
    factors = [t for a in active for t in (a.up, a.down)]
    strengths = tuple(a.strength for a in active)
    return _RotatedLinearFn.apply(x, module.weight, module.bias, strengths, *factors)


def _conv_forward(module: nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    active = _active(module)
    if not active:
        return module._conv_forward(x, module.weight, module.bias)
    if not module.training and not _needs_grad(module, active):
        w = _cached_rotated_weight(module, active, module.weight.dtype)
    else:  # opt-in path, not in the paper: plain autograd through the rotation
        theta = LF.summed_angles((a.up, a.down, a.strength) for a in active)
        w = LF.rotate_by_angles(module.weight, theta)
    return module._conv_forward(x, w, module.bias)


def _install(module: nn.Module) -> None:
    if hasattr(module, ADAPTERS_ATTR):
        return
    module.add_module(ADAPTERS_ATTR, nn.ModuleDict())
    forward = _linear_forward if isinstance(module, nn.Linear) else _conv_forward
    module.forward = forward.__get__(module)  # instance attribute; `del` restores the class forward


def _uninstall(module: nn.Module) -> None:
    delattr(module, ADAPTERS_ATTR)
    module.__dict__.pop("forward", None)
    module.__dict__.pop("_lorad_cache", None)


def lorad_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer that carries LoRaD adapters. A layer that PEFT wrapped (a LoRA on the same
    backbone) keeps its own name: PEFT's ``base_layer`` is the layer itself."""
    for name, module in model.named_modules():
        if hasattr(module, ADAPTERS_ATTR):
            yield name.replace(".base_layer", ""), module


def adapter_names(model: nn.Module) -> list[str]:
    names: dict[str, None] = {}
    for _, module in lorad_layers(model):
        names.update(dict.fromkeys(getattr(module, ADAPTERS_ATTR)))
    return list(names)


def attach(model: nn.Module, rank: int, preset: str | None = None, targets: Sequence[str] | None = None,
           exclude: Sequence[str] = (), adapter_name: str = DEFAULT_ADAPTER, strength: float = 1.0,
           include_conv: bool = False, freeze_base: bool = True) -> list[str]:
    """Add a fresh (identity) LoRaD adapter to the layers chosen by ``preset`` or ``targets``.

    Returns the names of the adapted layers. With ``freeze_base`` every parameter of the model
    except the LoRaD ones stops requiring grad (the usual setup for adapter training).
    """
    chosen = select_targets(model, preset=preset, targets=targets, exclude=exclude,
                            include_conv=include_conv)
    for name, module in chosen:
        existing = getattr(module, ADAPTERS_ATTR, {})
        if adapter_name in existing:
            raise ValueError(f"layer '{name}' already has an adapter named '{adapter_name}'; "
                             "pick another adapter_name or detach it first")
    if freeze_base:  # freeze the base model, not adapters attached earlier (LoRaD's, or PEFT's LoRA factors)
        for name, p in model.named_parameters():
            if f"{ADAPTERS_ATTR}." not in name and not INSIDE_ADAPTER.search(name):
                p.requires_grad_(False)
    for name, module in chosen:
        _install(module)
        (out_f, _), (_, half) = LF.adapter_shapes(module.weight.shape, rank)
        getattr(module, ADAPTERS_ATTR)[adapter_name] = LoRaDAdapter(
            out_f, half, rank, strength, device=module.weight.device)
    return [name for name, _ in chosen]


def attach_weights(model: nn.Module, layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   adapter_name: str = DEFAULT_ADAPTER, strength: float = 1.0,
                   trainable: bool = False) -> None:
    """Attach given ``{layer name: (up, down)}`` tensors as one adapter (already validated)."""
    modules = dict(model.named_modules())
    for name in layers:
        if adapter_name in getattr(modules[name], ADAPTERS_ATTR, {}):
            raise ValueError(f"layer '{name}' already has an adapter named '{adapter_name}'; "
                             "pick another adapter name or detach it first")
    for name, (up, down) in layers.items():
        module = modules[name]
        _install(module)
        adapter = LoRaDAdapter(up.shape[0], down.shape[1], up.shape[1], strength,
                               device=module.weight.device)
        with torch.no_grad():
            adapter.up.copy_(up)
            adapter.down.copy_(down)
        adapter.requires_grad_(trainable)
        getattr(module, ADAPTERS_ATTR)[adapter_name] = adapter


def _adapters(model: nn.Module, adapter_name: str | None) -> Iterator[tuple[str, nn.Module, LoRaDAdapter]]:
    found = False
    for name, module in lorad_layers(model):
        for key, adapter in getattr(module, ADAPTERS_ATTR).items():
            if adapter_name is None or key == adapter_name:
                found = True
                yield name, module, adapter
    if adapter_name is not None and not found:
        raise KeyError(f"the model has no LoRaD adapter named '{adapter_name}' "
                       f"(it has: {', '.join(adapter_names(model)) or 'none'})")


def trainable_parameters(model: nn.Module, adapter_name: str | None = None) -> list[nn.Parameter]:
    """The ``up``/``down`` parameters of one adapter (or of all), for the optimiser."""
    return [p for _, _, a in _adapters(model, adapter_name) for p in (a.up, a.down)]


def count_parameters(model: nn.Module, adapter_name: str | None = None) -> int:
    return sum(p.numel() for p in trainable_parameters(model, adapter_name))


def set_strength(model: nn.Module, strength: float, adapter_name: str | None = None) -> None:
    """Change an adapter's strength (it scales the angles). Merged adapters must be unmerged first."""
    if not math.isfinite(strength):
        raise ValueError(f"an adapter strength must be a finite number, not {strength!r}")
    for name, _, adapter in _adapters(model, adapter_name):
        if adapter.merged:
            raise RuntimeError(f"adapter on '{name}' is merged; unmerge it before changing its strength")
        adapter.strength = float(strength)


@torch.no_grad()
def merge_adapters(model: nn.Module, adapter_name: str | None = None) -> None:
    """Bake adapters into the base weights in place (angles add); forward then skips them."""
    _rotate_in_place(model, adapter_name, merging=True)


@torch.no_grad()
def unmerge_adapters(model: nn.Module, adapter_name: str | None = None) -> None:
    """Exact inverse of :func:`merge_adapters` (up to the weight dtype's rounding)."""
    _rotate_in_place(model, adapter_name, merging=False)


def _rotate_in_place(model: nn.Module, adapter_name: str | None, merging: bool) -> None:
    per_layer: dict[str, tuple[nn.Module, list[LoRaDAdapter]]] = {}
    for name, module, adapter in _adapters(model, adapter_name):
        if adapter.merged != merging:
            per_layer.setdefault(name, (module, []))[1].append(adapter)
    for module, adapters in per_layer.values():
        sign = 1.0 if merging else -1.0
        theta = LF.summed_angles((a.up, a.down, sign * a.strength) for a in adapters)
        module.weight.data.copy_(LF.rotate_by_angles(module.weight.data, theta))
        for a in adapters:
            a.merged = merging


def detach(model: nn.Module, adapter_name: str | None = None, unmerge: bool = True) -> None:
    """Remove one adapter (or all). Merged adapters are unmerged first unless ``unmerge=False``,
    in which case their rotation stays baked into the weights."""
    if unmerge:
        unmerge_adapters(model, adapter_name)
    for _, module in list(lorad_layers(model)):
        adapters = getattr(module, ADAPTERS_ATTR)
        for key in [k for k in adapters if adapter_name is None or k == adapter_name]:
            del adapters[key]
        module.__dict__.pop("_lorad_cache", None)
        if not adapters:
            _uninstall(module)


def clear_cache(model: nn.Module) -> None:
    """Free the eval-time rotated weights (they are rebuilt on the next forward)."""
    for _, module in lorad_layers(model):
        module.__dict__.pop("_lorad_cache", None)


def adapter_tensors(model: nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{layer name: (up, down)}`` of one adapter, detached, for saving."""
    return {name: (a.up.detach(), a.down.detach()) for name, _, a in _adapters(model, adapter_name)}
