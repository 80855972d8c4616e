"""WaDi Train LoRaD: DreamBooth-style training of a LoRaD adapter on the MODEL loaded in the graph.

It trains the way ComfyUI's own TrainLoraNode does: each targeted weight gets a weight wrapper
(``ModelPatcher.add_weight_wrapper``) that rotates it by the adapter's angles, and ComfyUI's
``TrainSampler`` runs the steps through its model wrapper (x0-space MSE at random sigmas). Class
latents, when given, are mixed in with the class prompt (prior preservation). As upstream's node does
today, it trains on a clone of the model with ComfyUI's training flag set
(``comfy.model_management.in_training``) and never hands the training model (its weight wrappers) on:
the adapter is saved to models/loras in WaDi's LoRaD format, and the output MODEL is the input model
with that file applied as ordinary LoRaD patches, exactly as ``WaDi Load LoRaD`` would apply it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from wadi_core.models.families import family_from_weight_shapes
from wadi_core.lorad import functional as LF
from wadi_core.lorad.io import DOWN, PREFIXES, UP, adapter_metadata, encode_name, read_adapter
from wadi_core.lorad.presets import get_preset

from .patching import lorad_patches

PRESET = "unet-student"


def normal_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A checkpoint loaded inside a ComfyUI prompt holds inference tensors, which autograd cannot save for
    backward; layers get a copy instead (ComfyUI's TrainLoraNode has the same effect by wrapping every weight)."""
    return tensor.clone() if tensor.is_inference() else tensor


def wrap_frozen_weights(patched, trained_keys: set[str]) -> None:
    """Give every other weight and bias of the model to its layer through :func:`normal_tensor`."""
    for name, module in patched.model.named_modules():
        for kind in ("weight", "bias"):
            key = f"{name}.{kind}"
            if hasattr(module, f"{kind}_function") and getattr(module, kind, None) is not None \
                    and key not in trained_keys:
                patched.add_weight_wrapper(key, normal_tensor)


class LoRaDWeightWrapper(nn.Module):
    """Called by ComfyUI on a layer's weight at every forward: returns it rotated by ``up @ down``."""

    def __init__(self, weight: torch.Tensor, rank: int):
        super().__init__()
        up_shape, down_shape = LF.adapter_shapes(weight.shape, rank)
        self.up = nn.Parameter(torch.zeros(up_shape))  # zero angles: the model starts unchanged
        self.down = nn.Parameter(torch.empty(down_shape))
        nn.init.xavier_uniform_(self.down)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return LF.rotate(normal_tensor(weight), self.up, self.down).to(weight.dtype)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def move_to(self, device) -> int:
        self.to(device)
        return self.passive_memory_usage()


def trainable_layers(model) -> dict[str, str]:
    """``{diffusers module name: ComfyUI weight key}`` of the layers the student preset targets (the UNet's
    Linear layers in its down, mid and up blocks)."""
    import comfy.utils

    config = getattr(model.model.model_config, "unet_config", None)
    if not config or "num_res_blocks" not in config:
        raise ValueError("WaDi Train LoRaD trains Stable Diffusion UNets (SD1.x, SD2.x, SDXL); this model has none")
    state = model.model.state_dict()
    preset = get_preset(PRESET)
    layers = {}
    for name, key in comfy.utils.unet_to_diffusers(config).items():
        module, full = name[: -len(".weight")], f"diffusion_model.{key}"
        if name.endswith(".weight") and full in state and state[full].ndim == 2 and preset.selects(module):
            layers[module] = full
    if not layers:
        raise ValueError("no UNet layer of this model matches WaDi's LoRaD targets; is it a Stable Diffusion UNet?")
    return layers


def dataset(instance_latents: dict, instance_conditioning: list, class_latents: dict | None,
            class_conditioning: list | None) -> tuple[torch.Tensor, list]:
    """Latents and one conditioning entry per latent; instance images repeated to balance the class images."""
    instance = instance_latents["samples"]
    if instance.shape[0] == 0:
        raise ValueError("no instance images: encode 3-8 images of the subject with VAE Encode")
    if (class_latents is None) != (class_conditioning is None):
        raise ValueError("prior preservation needs both class latents and the class prompt's conditioning")
    if class_latents is None:
        return instance, [instance_conditioning[0]] * instance.shape[0]
    classes = class_latents["samples"]
    if classes.shape[1:] != instance.shape[1:]:
        raise ValueError(f"class latents {tuple(classes.shape[1:])} and instance latents {tuple(instance.shape[1:])} "
                         "differ in size; encode both at the same resolution")
    repeats = max(1, classes.shape[0] // instance.shape[0])
    instance = instance.repeat(repeats, 1, 1, 1)
    latents = torch.cat([instance, classes])
    return latents, [instance_conditioning[0]] * instance.shape[0] + [class_conditioning[0]] * classes.shape[0]


def save_adapter(wrappers: dict[str, LoRaDWeightWrapper], model, layers: dict[str, str], rank: int,
                 filename_prefix: str) -> tuple[str, str]:
    """Write the adapter to models/loras (``PREFIX.safetensors``, numbered if taken); returns its file name and
    path."""
    import os

    import folder_paths

    from wadi_core import fileio

    prefix = PREFIXES["unet"]
    tensors = {}
    for module, wrapper in wrappers.items():
        tensors[f"{encode_name(prefix, module)}.{UP}"] = wrapper.up.detach().float().cpu()
        tensors[f"{encode_name(prefix, module)}.{DOWN}"] = wrapper.down.detach().float().cpu()
    state = model.model.state_dict()
    family = family_from_weight_shapes({f"{m}.weight": tuple(state[k].shape) for m, k in layers.items()})
    folder = folder_paths.get_folder_paths("loras")[0]
    name, counter = f"{filename_prefix}.safetensors", 1
    while os.path.exists(os.path.join(folder, name)):
        counter += 1
        name = f"{filename_prefix}_{counter:03d}.safetensors"
    meta = adapter_metadata(family, rank, PRESET, prefix, len(wrappers), {"wadi.trained_in": "ComfyUI"})
    path = os.path.join(folder, name)
    fileio.save_safetensors(tensors, path, meta)
    return name, path


class WaDiTrainLoRaD:
    DESCRIPTION = ("Train a LoRaD adapter on the model in the graph from a few images of a subject (DreamBooth). "
                   "Encode the subject images with VAE Encode and caption them with a rare word and the class "
                   "('a sks dog'); optional class latents and prompt ('a dog') keep the class as it was. Saves the "
                   "adapter to models/loras for WaDi Load LoRaD; the output model carries it already.")
    CATEGORY = "WaDi"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "adapter_name")
    FUNCTION = "train"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "the model to customise (a Stable Diffusion UNet: SD1.x, SD2.x)"}),
                "instance_latents": ("LATENT", {"tooltip": "the subject's images through VAE Encode"}),
                "instance_conditioning": ("CONDITIONING", {"tooltip": "e.g. 'a photo of sks dog'"}),
                "steps": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "optimiser steps"}),
                "learning_rate": ("FLOAT", {"default": 5e-3, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                            "tooltip": "AdamW learning rate of the angle factors"}),
                "rank": ("INT", {"default": 8, "min": 1, "max": 512, "tooltip": "rank of each layer's angle matrix"}),
                "batch_size": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "latents per step"}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "seeds the adapter's start and the training noise"}),
                "filename_prefix": ("STRING", {"default": "wadi_dreambooth",
                                               "tooltip": "file name in models/loras (numbered if taken)"}),
            },
            "optional": {
                "class_latents": ("LATENT", {"tooltip": "images of the plain class (prior preservation)"}),
                "class_conditioning": ("CONDITIONING", {"tooltip": "e.g. 'a photo of a dog'"}),
            },
        }

    def train(self, model, instance_latents, instance_conditioning, steps, learning_rate, rank, batch_size, seed,
              filename_prefix, class_latents=None, class_conditioning=None):
        import comfy.model_management
        try:
            from comfy_extras.nodes_custom_sampler import Guider_Basic, Noise_RandomNoise
            from comfy_extras.nodes_train import TrainSampler
        except ImportError:
            raise RuntimeError("WaDi Train LoRaD needs ComfyUI's training support (comfy_extras/nodes_train.py, "
                               "ComfyUI 0.3.40 or newer); update ComfyUI") from None
        latents, positive = dataset(instance_latents, instance_conditioning, class_latents, class_conditioning)
        layers = trainable_layers(model)
        patched = model.clone()
        state = patched.model.state_dict()
        with torch.inference_mode(False):
            torch.manual_seed(seed)
            wrappers = {}
            for module, key in layers.items():
                wrappers[module] = LoRaDWeightWrapper(state[key], rank)
                patched.add_weight_wrapper(key, wrappers[module])
            wrap_frozen_weights(patched, set(layers.values()))
            params = [p for w in wrappers.values() for p in w.parameters()]
            optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
            patched.model.requires_grad_(False)
            comfy.model_management.load_models_gpu([patched], memory_required=1e20, force_full_load=True)
            losses = []
            sampler = TrainSampler(torch.nn.MSELoss(), optimizer, loss_callback=losses.append,
                                   batch_size=batch_size, total_steps=steps, seed=seed,
                                   training_dtype=torch.float32 if latents.device.type == "cpu" else torch.bfloat16)
            guider = Guider_Basic(patched)
            guider.set_conds(positive)
            noise = Noise_RandomNoise(seed)
            latents = latents.float()
            was_training = getattr(comfy.model_management, "in_training", False)
            try:
                comfy.model_management.in_training = True
                with warnings.catch_warnings():  # float32 "autocast" on CPU is what we ask for, not a problem
                    warnings.filterwarnings("ignore", message="In CPU autocast")
                    guider.sample(noise.generate_noise({"samples": latents}), latents, sampler,
                                  torch.arange(latents.shape[0]), seed=seed)
            finally:
                comfy.model_management.in_training = was_training
            for wrapper in wrappers.values():
                wrapper.requires_grad_(False)
        name, path = save_adapter(wrappers, model, layers, rank, filename_prefix)
        trained = model.clone()  # the training clone and its wrappers stay here
        patches, strength = lorad_patches(model, read_adapter(path), 1.0)
        trained.add_patches(patches, strength)
        report = f"trained {len(wrappers)} layers for {steps} steps (last loss {losses[-1]:.4f}); saved {name}"
        return {"ui": {"text": [report]}, "result": (trained, name)}
