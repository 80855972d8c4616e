"""FSDP for the distillation: each process keeps a 1/N shard of the networks' weights (torch's FSDP2,
``fully_shard``), on GPUs (NCCL) and on CPU processes (gloo) alike.

``accelerate launch --use_fsdp`` asks for it. accelerate itself shards only on GPUs and shards each network it is
given; the distiller shards them itself instead, so that the three networks can still be one backbone with two
adapters (:mod:`wadi_core.distill.shared`): the parts of the backbone's blocks (:func:`units`), the blocks and the
backbone are FSDP units, an adapter's weights are sharded with the unit they sit in, and the teacher pass gathers the
same shards as the student's.

A sharded parameter is a ``DTensor`` holding this process's rows. Everything that reads whole tensors (adapter files,
checkpoints, the EMA's saved state) goes through :func:`gathered` on every process at once; what is loaded back
goes through :func:`shard_like`. Checkpoints thus hold whole tensors: a run resumes under FSDP, DDP or one process.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

# the backbone's blocks (diffusers' UNets and DiTs): in a UNet's, each resnet, transformer and resampler is an FSDP unit
# of its own (one of SD1.5's up blocks holds 30% of its weights: a process would gather all of it at once), then the
# block; a DiT's transformer blocks are units as they are
UNET_BLOCK_LISTS = ("down_blocks", "up_blocks")
DIT_BLOCK_LISTS = ("transformer_blocks",)


def requested() -> bool:
    """``accelerate launch --use_fsdp`` (which also sets accelerate's FSDP mode on GPUs)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1")


def accelerate_plugin(sharded: bool) -> dict:
    """accelerate's FSDP settings for ``Accelerator(...)``: FSDP2 whatever ``--fsdp_version`` says (accelerate's
    FSDP1 settings fail on CPU processes, and the sharding is the distiller's own anyway)."""
    if not sharded:
        return {}
    from accelerate.utils import FullyShardedDataParallelPlugin

    return {"fsdp_plugin": FullyShardedDataParallelPlugin(fsdp_version=2)}


def shard(model: nn.Module, device: torch.device, processes: int) -> nn.Module:
    """Shard ``model`` in place over all processes: each of its :func:`units`, then the rest of the model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (processes,))
    for unit in units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def units(model: nn.Module) -> list[nn.Module]:
    """The parts of ``model`` that are FSDP units below the model itself, inner ones first: a UNet block's resnets,
    transformers and resamplers, then the block (for what is left in it); a DiT's transformer blocks."""
    found = []
    blocks = [block for name in UNET_BLOCK_LISTS for block in getattr(model, name, None) or ()]
    if isinstance(getattr(model, "mid_block", None), nn.Module):
        blocks.append(model.mid_block)
    for block in blocks:
        found += [part for child in block.children() if isinstance(child, nn.ModuleList) for part in child]
        found.append(block)
    found += [block for name in DIT_BLOCK_LISTS for block in getattr(model, name, None) or ()]
    return found


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor (the whole tensor when it is not sharded)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from every process's shard (a collective: every process calls it). A gathered
    tensor goes to host memory at once, so that a device holds one whole tensor at a time."""
    return tensor.full_tensor().cpu() if isinstance(tensor, DTensor) else tensor


def gathered(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`whole` of every tensor of a state, in the state's order (the same on every process)."""
    return {key: whole(value.detach()) for key, value in state.items()}


def shard_like(like: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``like``: sharded the same way when ``like`` is sharded."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements)


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with whole tensors (a collective)."""
    state = opt.state_dict()
    state["state"] = {index: {key: whole(value) for key, value in entry.items()}
                      for index, entry in state["state"].items()}
    return state


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a state of :func:`optimizer_state` (or a plain one) into ``opt``, sharded as its parameters are."""
    params = [p for group in opt.param_groups for p in group["params"]]
    entries = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        entries[index] = {key: shard_like(param, value) if torch.is_tensor(value) and value.dim() else value
                          for key, value in entry.items()}
    opt.load_state_dict({**state, "state": entries})
