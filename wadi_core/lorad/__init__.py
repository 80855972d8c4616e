"""LoRaD: low-rank rotation adapters (the math, presets and file: docs/lorad.md).

``functional`` holds the pure math, ``module`` attaches adapters to torch models, ``presets``
chooses layers and ``io`` reads and writes adapter files.
"""

from . import functional
from .functional import angles, delta, merge, rotate, rotate_by_angles, unmerge
from .io import AdapterError, AdapterFile, load_adapter, read_adapter, save_adapter
from .module import (
    LoRaDAdapter,
    adapter_names,
    attach,
    clear_cache,
    count_parameters,
    detach,
    lorad_layers,
    merge_adapters,
    set_strength,
    trainable_parameters,
    unmerge_adapters,
)
from .presets import PRESETS, get_preset, preset_parameter_count, select_targets

__all__ = [
    "functional", "angles", "delta", "merge", "rotate", "rotate_by_angles", "unmerge",
    "AdapterError", "AdapterFile", "load_adapter", "read_adapter", "save_adapter",
    "LoRaDAdapter", "adapter_names", "attach", "clear_cache", "count_parameters", "detach",
    "lorad_layers", "merge_adapters", "set_strength", "trainable_parameters", "unmerge_adapters",
    "PRESETS", "get_preset", "preset_parameter_count", "select_targets",
]
