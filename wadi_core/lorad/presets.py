"""Which layers get a LoRaD adapter: the paper's presets and user glob patterns.

Counts these presets must reproduce are in docs/lorad.md ("Which layers") and in tests/test_presets.py.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

UNET_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")
FAKE_EXCLUDED = ("proj_in", "proj_out", "time_emb_proj")


@dataclass(frozen=True)
class Preset:
    """A rule over ``nn.Linear`` module names (diffusers naming); with ``conv`` also over convolutions."""

    name: str
    description: str
    paper_rank: int
    under: tuple[str, ...] = ()  # name must start with one of these ("" = anywhere)
    exclude: tuple[str, ...] = field(default=())  # name must contain none of these
    conv: bool = False  # also convolutions (their kernels flattened into rows; not in the paper)

    def selects(self, name: str) -> bool:
        if self.under and not name.startswith(self.under):
            return False
        return not any(word in name for word in self.exclude)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("unet-student", "every Linear in the UNet's down, mid and up blocks", 256, UNET_BLOCKS),
        Preset("unet-fake", "unet-student minus proj_in, proj_out and time_emb_proj", 32,
               UNET_BLOCKS, FAKE_EXCLUDED),
        # Not the paper's: a UNet keeps most of its spatial weights in the resnets' convolutions.
        Preset("unet-student-conv", "unet-student plus every convolution in the down, mid and up blocks", 256,
               UNET_BLOCKS, conv=True),
        Preset("dit-student", "every Linear of the DiT except the adaln_single timestep embedder", 128,
               (), ("adaln_single",)),
        Preset("dit-fake", "Linear layers under transformer_blocks minus proj_in, proj_out, time_emb_proj",
               32, ("transformer_blocks.",), FAKE_EXCLUDED),
    )
}

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}") from None


# the layers of an adapter PEFT put on a model (its LoRA factors), which are never a base layer to adapt
INSIDE_ADAPTER = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector|lora_embedding_A|lora_embedding_B)(\.|$)")


def select_targets(model: nn.Module, preset: str | None = None, targets: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), include_conv: bool = False) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs a preset or glob patterns choose.

    ``targets`` are shell-style globs over module names (``"*attn1.to_q"``); ``exclude`` globs
    remove names again. Presets choose ``nn.Linear`` (and convolutions where the preset says so);
    patterns also choose convolutions when ``include_conv`` is set (flattened kernels, not in the paper).
    """
    if (preset is None) == (targets is None):
        raise ValueError("give exactly one of a preset name or a list of target patterns")
    rule = get_preset(preset) if preset is not None else None
    kinds = ADAPTABLE if (rule.conv if rule is not None else include_conv) else (nn.Linear,)
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, kinds) or not name or INSIDE_ADAPTER.search(name):
            continue
        if rule is not None and not rule.selects(name):
            continue
        if targets is not None and not any(fnmatch.fnmatchcase(name, pat) for pat in targets):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        if module.weight.shape[1:].numel() < 2:
            continue  # nothing to rotate
        chosen.append((name, module))
    if not chosen:
        what = f"preset '{preset}'" if preset else f"patterns {list(targets)}"
        raise ValueError(f"{what} matched no layer of {type(model).__name__}; "
                         "check that the preset fits this architecture (unet-* for UNets, dit-* for DiTs)")
    return chosen


def preset_parameter_count(model: nn.Module, preset: str, rank: int) -> tuple[int, int]:
    """``(layers, parameters)`` a preset adds at ``rank``: ``r * (out + in//2)`` per layer.

    Works on a model built on the ``meta`` device (no weights needed).
    """
    layers = select_targets(model, preset=preset)
    params = sum(rank * (m.weight.shape[0] + m.weight.shape[1:].numel() // 2) for _, m in layers)
    return len(layers), params


def preset_table() -> list[dict]:
    """Layers and exact trainable parameters of every preset at its paper ranks on the paper's architectures,
    built on the meta device (no weights, no memory)."""
    from ..models.families import REFERENCE_ARCHITECTURES, build_on_meta

    rows = []
    for family, (_, presets) in REFERENCE_ARCHITECTURES.items():
        model = build_on_meta(family)
        total = sum(p.numel() for p in model.parameters())
        for preset, ranks in presets.items():
            for rank in ranks:
                layers, params = preset_parameter_count(model, preset, rank)
                rows.append({"family": family, "preset": preset, "rank": rank, "layers": layers,
                             "parameters": params, "share": params / total})
    return rows
