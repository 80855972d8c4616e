"""The trainable part of a distilled network: a LoRaD, LoRA or DoRA adapter, or all weights.

One interface for the four kinds the paper compares (its Table 2), so that distillation, the
ablation and the loaders treat them alike:

- ``lorad``: our rotation adapter (``wadi_core.lorad``), saved as a LoRaD file;
- ``lora`` / ``dora``: PEFT's LoRA and DoRA (alpha = rank), saved with diffusers' ``unet.``-prefixed
  PEFT keys, which ``pipe.load_lora_weights`` reads;
- ``full``: every weight of the network trains; the file holds the whole network.

Every file carries ``wadi.adapter_type`` (and rank, preset, base) in its metadata, so a file
can be loaded without being told what it is.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from . import fileio
from .choices import ADAPTER_KINDS
from .models.families import family_of_model, model_kind
from .models.hub import local_path
from .lorad import module as lorad_module
from .lorad.io import PREFIXES, AdapterError, adapter_metadata, encode_name, load_adapter, read_adapter_safetensors
from .lorad.presets import select_targets

KINDS = ADAPTER_KINDS
TYPE_KEY = "wadi.adapter_type"


@dataclass(frozen=True)
class AdapterSpec:
    """What to train: ``kind`` at ``rank`` on the layers of ``preset`` (rank is unused for full)."""

    kind: str
    rank: int
    preset: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown adapter type '{self.kind}'; choose one of: {', '.join(KINDS)}")
        if self.kind != "full" and self.rank <= 0:
            raise ValueError(f"the adapter rank must be a positive integer, got {self.rank}")

    def label(self) -> str:
        return "full fine-tuning" if self.kind == "full" else f"{self.kind} rank {self.rank}"


def add_adapter(model: nn.Module, spec: AdapterSpec, name: str = "default") -> list[nn.Parameter]:
    """Make ``model`` trainable as ``spec`` says and return the parameters to optimise.

    The rest of the model is frozen; a fresh adapter leaves the model's output unchanged.
    """
    if spec.kind == "full":
        model.requires_grad_(True)
        return list(model.parameters())
    if spec.kind == "lorad":
        lorad_module.attach(model, spec.rank, preset=spec.preset, adapter_name=name)
        return lorad_module.trainable_parameters(model, name)
    from peft import LoraConfig, inject_adapter_in_model

    # PEFT targets the layer it wrapped for an adapter before by the wrapper's name
    targets = list(dict.fromkeys(layer.removesuffix(".base_layer") for layer, _ in select_targets(model, preset=spec.preset)))
    for param_name, param in model.named_parameters():  # the base, not adapters attached earlier
        if not ADAPTER_PARAM.search(param_name):
            param.requires_grad_(False)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.rank, target_modules=targets, use_dora=spec.kind == "dora",
                        lora_dropout=0.0, bias="none")
    earlier = [p for p in model.parameters() if p.requires_grad]  # adapters attached before this one
    with warnings.catch_warnings():  # a second adapter on one model (the shared backbone) is what we want
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name=name)  # (PEFT freezes everything but its own "lora_")
    for param in earlier:
        param.requires_grad_(True)
    return trainable_parameters(model, spec, name)


# parameters of an adapter (PEFT's LoRA / DoRA, or LoRaD), by their names in the model
ADAPTER_PARAM = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|lorad_adapters)\.")


def trainable_parameters(model: nn.Module, spec: AdapterSpec, name: str = "default") -> list[nn.Parameter]:
    """The parameters adapter ``name`` trains (every parameter for ``full``); other adapters on the same model are
    not among them."""
    if spec.kind == "full":
        return list(model.parameters())
    if spec.kind == "lorad":
        return lorad_module.trainable_parameters(model, name)
    own = re.compile(rf"\.(lora_A|lora_B|lora_magnitude_vector)\.{re.escape(name)}(\.|$)")
    return [p for n, p in model.named_parameters() if own.search(n)]


def trainable_state(model: nn.Module, spec: AdapterSpec, name: str = "default") -> dict[str, torch.Tensor]:
    """The trained tensors under stable names (for checkpoints and adapter files)."""
    if spec.kind == "full":
        return {k: v.detach() for k, v in model.state_dict().items()}
    if spec.kind == "lorad":
        prefix = PREFIXES[model_kind(model)]
        out = {}
        for layer, (up, down) in lorad_module.adapter_tensors(model, name).items():
            out[f"{encode_name(prefix, layer)}.lorad_up"] = up
            out[f"{encode_name(prefix, layer)}.lorad_down"] = down
        return out
    from peft.utils import get_peft_model_state_dict
    return {f"{model_kind(model)}.{k}": v.detach() for k, v in
            get_peft_model_state_dict(model, adapter_name=name).items()}


def load_trainable_state(model: nn.Module, spec: AdapterSpec, state: Mapping[str, torch.Tensor],
                         name: str = "default") -> None:
    """Inverse of :func:`trainable_state` on a model prepared with :func:`add_adapter`."""
    own = trainable_state(model, spec, name)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise AdapterError(f"the saved {spec.label()} weights do not fit this model ('{first}' is "
                           f"{'missing' if missing else 'unexpected'}); they were made for another configuration")
    with torch.no_grad():
        for key, tensor in own.items():
            if tensor.shape != state[key].shape:
                raise AdapterError(f"'{key}' has shape {tuple(state[key].shape)} but the model needs "
                                   f"{tuple(tensor.shape)}; the weights were made for another configuration")
            tensor.copy_(state[key])


def save_adapter_file(model: nn.Module, spec: AdapterSpec, path: str | os.PathLike, name: str = "default",
                      extra: Mapping[str, str] | None = None, overwrite: bool = False,
                      state: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write the trained part of ``model`` as one ``.safetensors`` file with its metadata (``state``: those
    tensors as :func:`trainable_state` names them, when the caller has them already, e.g. gathered from shards)."""
    state = trainable_state(model, spec, name) if state is None else state
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    layers = len(lorad_module.adapter_tensors(model, name)) if spec.kind == "lorad" else len(state)
    meta = adapter_metadata(family_of_model(model), spec.rank, spec.preset, PREFIXES[model_kind(model)], layers,
                            {TYPE_KEY: spec.kind, **(extra or {})})
    if spec.kind != "lorad":
        meta["wadi.format"] = f"wadi-{spec.kind}"
    return fileio.save_safetensors(state, path, meta, overwrite=overwrite)


def read_spec(path: str | os.PathLike) -> AdapterSpec:
    """The :class:`AdapterSpec` recorded in an adapter file's metadata (plain LoRaD files included)."""
    path = local_path(path)  # a file on the Hugging Face Hub is read from the Hub's cache
    meta, _ = read_adapter_safetensors(path, tensors=False)
    kind = meta.get(TYPE_KEY, "lorad" if meta.get("wadi.format") == "lorad" else None)
    if kind is None:
        raise AdapterError(f"{path} has no wadi metadata; give a file written by wadi (a LoRaD adapter or a "
                           "distilled student)")
    if kind not in KINDS:
        raise AdapterError(f"{path}: its metadata {TYPE_KEY}={kind!r} is not one of {', '.join(KINDS)}; the file "
                           "was edited or damaged")
    try:
        rank = int(meta.get("wadi.rank", 0) or 0)
    except ValueError:
        raise AdapterError(f"{path}: its metadata wadi.rank={meta['wadi.rank']!r} is not a whole number; the file "
                           "was edited or damaged — export it again") from None
    _check_key_style(path, kind)
    return AdapterSpec(kind, rank, meta.get("wadi.preset", "custom"))


def _check_key_style(path: str | os.PathLike, kind: str) -> None:
    """The tensors must be of the kind the metadata names: LoRaD factors, PEFT LoRA/DoRA factors, or a whole
    network (a file whose metadata was changed would otherwise load as the wrong thing)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    lorad = any(k.endswith((".lorad_up", ".lorad_down")) for k in keys)
    peft = any(".lora_A." in k or ".lora_B." in k for k in keys)
    found = "LoRaD factors" if lorad else ("LoRA factors" if peft else "a whole network")
    expected = {"lorad": "LoRaD factors", "lora": "LoRA factors", "dora": "LoRA factors", "full": "a whole network"}
    if expected[kind] != found:
        raise AdapterError(f"{path}: its metadata says {TYPE_KEY}={kind!r} but its tensors are {found}; the file "
                           "was edited or damaged — export it again")


def other_teacher(path: str | os.PathLike, model_dir: str | os.PathLike) -> str | None:
    """The teacher a distilled student records (``wadi.teacher``) when it is another model folder on this machine
    than ``model_dir``; None when it is the same, unrecorded, or not here (a file from another machine)."""
    teacher = read_adapter_safetensors(path, tensors=False)[0].get("wadi.teacher")
    if not teacher or not Path(teacher).exists():
        return None
    return None if Path(teacher).resolve() == Path(model_dir).resolve() else teacher


def apply_adapter_file(model: nn.Module, path: str | os.PathLike, name: str = "default",
                       strength: float = 1.0) -> AdapterSpec:
    """Load a file written by :func:`save_adapter_file` (or any LoRaD file) onto ``model`` for inference.

    LoRaD files stack (their angles add, each scaled by its strength); a LoRA, DoRA or full student
    is applied alone at strength 1. A file on the Hugging Face Hub (``owner/name/file.safetensors``) is read from
    the Hub's cache.
    """
    path = local_path(path)
    spec = read_spec(path)
    if spec.kind == "lorad":
        load_adapter(model, path, adapter_name=name, strength=strength)
        model.requires_grad_(False)
        return spec
    if strength != 1.0:
        raise AdapterError(f"{path} is a {spec.label()} student; strengths other than 1 are for LoRaD adapters")
    from safetensors.torch import load_file
    state = load_file(str(path))
    bad = next((k for k, v in state.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise AdapterError(f"{path}: '{bad}' holds {'NaN or Inf' if state[bad].is_floating_point() else 'non-float'} "
                           "values; the training that wrote it diverged or the file is damaged — use an earlier "
                           "checkpoint")
    family = family_of_model(model)
    if spec.kind == "full":
        own = model.state_dict()
        misfit = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
        if misfit:
            raise AdapterError(f"{path} holds a full network that does not match this model ('{misfit[0]}'); "
                               f"it was made for another base model than this '{family}'")
        model.load_state_dict(state)
        model.requires_grad_(False)
        return spec
    add_adapter(model, spec, name)
    load_trainable_state(model, spec, state, name)
    model.requires_grad_(False)
    return spec


def plain_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its adapters baked into the weights and removed: a plain network
    that any tool loads (the student as a merged UNet)."""
    import copy

    plain = copy.deepcopy(model)
    if lorad_module.adapter_names(plain):
        lorad_module.merge_adapters(plain)
        lorad_module.detach(plain, unmerge=False)
    if any(".base_layer." in n for n, _ in plain.named_parameters()):
        from peft.tuners.lora import LoraLayer

        for layer in [m for m in plain.modules() if isinstance(m, LoraLayer)]:
            layer.merge()
        merged = {n.replace(".base_layer.", "."): v for n, v in plain.state_dict().items()
                  if ".lora_" not in n}
        plain = type(model).from_config(model.config) if hasattr(model, "config") else copy.deepcopy(model)
        plain.load_state_dict(merged)
    return plain.requires_grad_(False)
