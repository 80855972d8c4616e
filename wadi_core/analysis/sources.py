"""Backbone weights read one tensor at a time: a checkpoint, or a checkpoint plus an adapter.

``wadi analyze`` compares two models layer by layer. Reading tensors on demand from the
safetensors files (instead of building both networks) keeps an SD1.5-sized pair within a few GB.
Every source names tensors as diffusers does, whatever the file layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import students
from ..lorad import functional as LF
from ..lorad.io import AdapterError, read_adapter_safetensors
from ..merge import plan_merge
from ..models.checkpoint import Checkpoint, CheckpointError, open_checkpoint


class ArchitectureMismatch(ValueError):
    """Two models whose layers differ; the message names the first differing layer."""


class WeightSource:
    """``shapes`` of every backbone tensor under its diffusers name, and ``read(name)``."""

    label: str
    checkpoint: Checkpoint  # the base whose files are read

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.checkpoint.shapes

    def read(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(name)


class CheckpointSource(WeightSource):
    def __init__(self, checkpoint: Checkpoint, label: str | None = None):
        self.checkpoint = checkpoint
        self.label = label or str(checkpoint.path)


class LoRaDSource(WeightSource):
    """A base with LoRaD adapters baked in as it is read (rotations of the adapted rows)."""

    def __init__(self, base: Checkpoint, adapter: Path, strength: float = 1.0):
        self.checkpoint = base
        self.plan = plan_merge(base, [(adapter, strength)])  # validates every key and shape first
        self.label = f"{base.path} + {adapter.name}"

    def read(self, name: str) -> torch.Tensor:
        tensor = self.checkpoint.read(name)
        layer = name[: -len(".weight")]
        if name.endswith(".weight") and layer in self.plan.layers:
            tensor = LF.rotate_by_angles(tensor.float(), self.plan.theta(layer))
        return tensor


class PeftLoraSource(WeightSource):
    """A base with a wadi LoRA or DoRA student (PEFT keys, alpha = rank) applied as it is read.

    LoRA: ``W + B A``. DoRA: ``m * (W + B A) / ||W + B A||`` with row norms, as PEFT computes it.
    """

    def __init__(self, base: Checkpoint, adapter: Path, kind: str):
        self.checkpoint = base
        self.kind = kind
        self.label = f"{base.path} + {adapter.name}"
        _, tensors = read_adapter_safetensors(adapter)
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        prefix = f"{base.backbone}."
        for key, tensor in tensors.items():
            module, _, part = key.removeprefix(prefix).rpartition(".lora_")
            if not module or not key.startswith(prefix):
                raise AdapterError(f"{adapter}: key '{key}' is not a PEFT LoRA key for a {base.backbone}")
            self.layers.setdefault(module, {})[part.removesuffix(".weight")] = tensor
        shapes = base.layer_shapes
        for module, parts in self.layers.items():
            shape = shapes.get(module)
            if shape is None or not {"A", "B"} <= set(parts) or \
                    (parts["B"].shape[0], LF.flat_in_features(parts["A"].shape)) != \
                    (shape[0], LF.flat_in_features(shape)):
                raise AdapterError(f"{adapter}: layer '{module}' does not fit {base.path} "
                                   f"({'no such layer' if shape is None else f'weight {tuple(shape)}'}); "
                                   "the student was made for another base model")

    def read(self, name: str) -> torch.Tensor:
        tensor = self.checkpoint.read(name)
        parts = self.layers.get(name[: -len(".weight")]) if name.endswith(".weight") else None
        if parts is None:
            return tensor
        weight = tensor.float()
        flat = weight.reshape(weight.shape[0], -1)
        flat = flat + parts["B"].float().flatten(1) @ parts["A"].float().flatten(1)
        if self.kind == "dora":
            flat = flat * (parts["magnitude_vector"].float() / flat.norm(dim=1)).unsqueeze(1)
        return flat.reshape(weight.shape)


def open_source(path: str | os.PathLike, base: WeightSource | None = None,
                backbone: str | os.PathLike | None = None) -> WeightSource:
    """A model path as a :class:`WeightSource`.

    ``path`` is a diffusers folder or single-file checkpoint (``backbone``: a state dict replacing its UNet or
    DiT); with ``base`` it may also be a wadi adapter (LoRaD file, LoRA / DoRA student) applied to ``base``, or
    a state dict of a whole backbone (the authors' released files). A full-fine-tuning student holds the whole
    network and is read like a checkpoint.
    """
    path = Path(path).expanduser()
    if base is not None and path.is_file() and path.suffix == ".safetensors":
        try:
            spec = students.read_spec(path)
        except AdapterError:
            spec = None  # no wadi metadata: a checkpoint
        if spec is not None and spec.kind == "lorad":
            return LoRaDSource(base.checkpoint, path)
        if spec is not None and spec.kind in ("lora", "dora"):
            return PeftLoraSource(base.checkpoint, path, spec.kind)
    try:
        checkpoint = open_checkpoint(path, backbone)
        return CheckpointSource(checkpoint, checkpoint.label)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. (The second model may also be a wadi adapter or student file.)") from None


def check_same_architecture(base: WeightSource, other: WeightSource) -> None:
    """Raise :class:`ArchitectureMismatch` naming the first tensor that is missing or shaped differently."""
    for name, shape in base.shapes.items():
        theirs = other.shapes.get(name)
        if theirs is None:
            raise ArchitectureMismatch(f"the models have different architectures: '{name}' of {base.label} is "
                                       f"missing from {other.label}; compare a model with its own fine-tune")
        if tuple(theirs) != tuple(shape):
            raise ArchitectureMismatch(f"the models have different architectures: '{name}' is {tuple(shape)} in "
                                       f"{base.label} but {tuple(theirs)} in {other.label}")
    extra = sorted(set(other.shapes) - set(base.shapes))
    if extra:
        raise ArchitectureMismatch(f"the models have different architectures: '{extra[0]}' of {other.label} is "
                                   f"missing from {base.label}")
