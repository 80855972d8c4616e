"""From a LoRaD file to ComfyUI patches, validated against the model before anything is patched."""

from __future__ import annotations

import torch

from wadi_core.lorad import functional as LF
from wadi_core.lorad.io import AdapterError, AdapterFile

from .adapter import adapter_class, additive_patch


def _target_shape(state: dict, target) -> tuple[str, tuple[int, ...]]:
    """ComfyUI's key map gives a weight name, or ``(name, (dim, start, length))`` for a slice of a fused weight."""
    name, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
    shape = list(state[name].shape)
    if offset is not None:
        shape[offset[0]] = offset[2]
    return name, tuple(shape)


def lorad_patches(model, adapter: AdapterFile, strength: float) -> tuple[dict, float]:
    """``(patches for ModelPatcher.add_patches, the strength to add them with)``.

    Raises :class:`AdapterError` naming the keys that match no layer, or the first layer whose shape
    differs (a file for another base model), before the model is touched.
    """
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    unknown = [key for key in adapter.layers if key not in key_map]
    if unknown:
        shown = ", ".join(f"'{k}'" for k in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise AdapterError(f"{adapter.label()}: {len(unknown)} of {len(adapter.layers)} LoRaD keys match no layer of "
                           f"this model ({shown}); the adapter was made for another architecture")
    state = model.model.state_dict()
    cls = adapter_class()
    patches = {}
    for key, (up, down) in adapter.layers.items():
        target = key_map[key]
        name, shape = _target_shape(state, target)
        out_features, half = shape[0], LF.flat_in_features(shape) // 2
        if up.shape[0] != out_features or down.shape[1] != half:
            raise AdapterError(f"{adapter.label()}: '{key}' has up {tuple(up.shape)} / down {tuple(down.shape)} but "
                               f"the model's '{name}' is {shape} (needs [{out_features}, r] / [r, {half}]); the "
                               f"adapter was made for another base model (it says '{adapter.family}')")
        if cls is None:  # ComfyUI without weight adapters: an additive patch at this strength
            weight = state[name]
            if isinstance(target, tuple):
                weight = weight.narrow(*target[1])
            patches[target] = additive_patch(weight, up, down, strength)
        else:
            patches[target] = cls({f"{key}.lorad_up", f"{key}.lorad_down"}, (up, down))
    return patches, (1.0 if cls is None else strength)


def one_step_sigmas(model) -> torch.Tensor:
    """``[sigma(t=999), 0]``: one Euler step from there returns the model's x0 prediction at t=999.

    At sigma_max ComfyUI scales the noise by sqrt(1 + sigma^2) and the model input by
    1 / sqrt(1 + sigma^2), so the student sees unit-variance noise, as in wadi's own sampler.
    """
    sampling = model.get_model_object("model_sampling")
    # sigma_max of a discrete schedule is the sigma of its last timestep, T-1 (wadi_core.sampling.onestep.final_timestep)
    return torch.tensor([float(sampling.sigma_max), 0.0])
