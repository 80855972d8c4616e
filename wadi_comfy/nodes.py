"""The WaDi nodes (ComfyUI's V1 node interface, which every ComfyUI version loads).

Nodes stay thin: they parse inputs and call ``wadi_core`` or ComfyUI's own model API
(``ModelPatcher``, ``comfy.sample``, ``comfy.sd``); they never import ComfyUI's node classes.
A node that raises shows its message in ComfyUI and the server goes on with the next prompt.
"""

from __future__ import annotations

import torch

from wadi_core.lorad.io import read_adapter

from .distill_node import WaDiDistill
from .patching import lorad_patches, one_step_sigmas
from .training import WaDiTrainLoRaD

CATEGORY = "WaDi"


def _loras():
    import folder_paths
    return folder_paths.get_filename_list("loras")


def _lora_path(name: str):
    import folder_paths
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(f"'{name}' is not in ComfyUI's loras folder; put the LoRaD file there and refresh")
    return path


class WaDiLoadLoRaD:
    DESCRIPTION = ("Apply a LoRaD adapter (a rotation of the weight rows, from wadi distill or WaDi training) to a "
                   "model. The input model is not changed; loaders in a row stack (their angles add).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "the base model the adapter was made for (e.g. SD1.5)"}),
            "adapter_name": (_loras(), {"tooltip": "a LoRaD .safetensors file in models/loras"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                   "tooltip": "scales the rotation angles; 0 leaves the model exactly as it is"}),
        }, "optional": {
            "adapter_file": ("STRING", {"forceInput": True,
                                        "tooltip": "a file name in models/loras from another node (e.g. WaDi "
                                                   "Distill's adapter_name); when linked it replaces adapter_name"}),
        }}

    def load(self, model, adapter_name, strength, adapter_file=None):
        patched = model.clone()
        if strength == 0.0:
            return (patched,)
        adapter = read_adapter(_lora_path(adapter_file or adapter_name))  # LoRA or truncated files: one clear error
        patches, patch_strength = lorad_patches(model, adapter, strength)  # validated before anything changes
        patched.add_patches(patches, patch_strength)
        return (patched,)


class WaDiOneStepSigmas:
    DESCRIPTION = ("The one-step schedule of a WaDi student for SamplerCustom: [sigma at t=999, 0]. Use it with the "
                   "euler sampler and CFG 1; the student then predicts x0 from pure noise as wadi's sampler does.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "sigmas"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "the one-step student (its schedule gives sigma at t=999)"})}}

    def sigmas(self, model):
        return (one_step_sigmas(model),)


class WaDiOneStepSampler:
    DESCRIPTION = ("Draw with a one-step WaDi student: one model call from pure noise (t=999), no CFG. Works with "
                   "ControlNet conditioning from ComfyUI's Apply ControlNet nodes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "the one-step student: a checkpoint with WaDi Load LoRaD, or a merged one"}),
            "positive": ("CONDITIONING", {"tooltip": "the prompt (ControlNet conditioning works too); no negative: "
                                                     "the student draws with CFG 1"}),
            "latent_image": ("LATENT", {"tooltip": "an Empty Latent Image of the size to draw (512x512 for SD1.5)"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "the noise seed; the same seed draws the same image"}),
        }}

    def sample(self, model, positive, latent_image, seed):
        import comfy.sample
        import comfy.samplers
        import comfy.utils
        import latent_preview

        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = latent_preview.prepare_callback(model, 1)  # ComfyUI's progress bar and preview
        # CFG 1: ComfyUI skips the unconditional pass, so the negative is never evaluated.
        samples = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"),
                                             one_step_sigmas(model), positive, positive, latent,
                                             noise_mask=latent_image.get("noise_mask"), callback=callback,
                                             disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = latent_image.copy()
        out["samples"] = samples
        return (out,)


class WaDiMergeSave:
    DESCRIPTION = ("Bake the model's patches (LoRaD rotations and any LoRA) into its weights and save a single-file "
                   "checkpoint to output/checkpoints, which ComfyUI and A1111/Forge load like any other.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "the model with its LoRaD (and LoRA) patches, e.g. from WaDi Load LoRaD"}),
            "clip": ("CLIP", {"tooltip": "the text encoder to store in the checkpoint"}),
            "vae": ("VAE", {"tooltip": "the VAE to store in the checkpoint"}),
            "filename_prefix": ("STRING", {"default": "checkpoints/wadi-merged",
                                           "tooltip": "where in ComfyUI's output folder the checkpoint goes"})}}

    def save(self, model, clip, vae, filename_prefix):
        import comfy.sd
        import folder_paths

        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix,
                                                                       folder_paths.get_output_directory())
        path = f"{folder}/{name}_{counter:05}_.safetensors"
        comfy.sd.save_checkpoint(path, model, clip, vae, metadata={"wadi.merged": "true"})
        return {"ui": {"text": [path]}}


class WaDiExportLoRA:
    DESCRIPTION = ("Turn a LoRaD adapter into a plain LoRA (best rank-r SVD of each layer's rotation delta) in "
                   "models/loras, for tools that only read LoRA. Needs the base checkpoint the adapter was made for.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    FUNCTION = "export"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths
        return {"required": {
            "ckpt_name": (folder_paths.get_filename_list("checkpoints"),
                          {"tooltip": "the base checkpoint the adapter was made for"}),
            "adapter_name": (_loras(), {"tooltip": "the LoRaD file to convert"}),
            "rank": ("INT", {"default": 64, "min": 1, "max": 1024,
                             "tooltip": "the LoRA's rank: higher keeps more of the rotation (the report says how much)"}),
            "lora_name": ("STRING", {"default": "wadi-exported-lora",
                                     "tooltip": "file name of the LoRA written to models/loras"})}}

    def export(self, ckpt_name, adapter_name, rank, lora_name):
        import comfy.utils
        import folder_paths

        from wadi_core.merge import export_lora

        base = folder_paths.get_full_path("checkpoints", ckpt_name)
        out = f"{folder_paths.get_folder_paths('loras')[0]}/{lora_name}.safetensors"
        bar = None

        def on_layer(done, total):
            nonlocal bar
            bar = bar or comfy.utils.ProgressBar(total)
            bar.update_absolute(done + 1, total)
        result = export_lora(base, [(_lora_path(adapter_name), 1.0)], out, rank, dtype=torch.float16, progress=False,
                             on_layer=on_layer)
        report = (f"wrote {out}: {result.layers} layers at rank {result.rank}, relative error "
                  f"{result.relative_error:.2%} (worst layer {result.worst_layer}: {result.worst_error:.2%})")
        return {"ui": {"text": [report]}, "result": (report,)}


NODE_CLASS_MAPPINGS = {
    "WaDiLoadLoRaD": WaDiLoadLoRaD,
    "WaDiOneStepSigmas": WaDiOneStepSigmas,
    "WaDiOneStepSampler": WaDiOneStepSampler,
    "WaDiMergeSave": WaDiMergeSave,
    "WaDiExportLoRA": WaDiExportLoRA,
    "WaDiTrainLoRaD": WaDiTrainLoRaD,
    "WaDiDistill": WaDiDistill,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WaDiLoadLoRaD": "WaDi Load LoRaD",
    "WaDiOneStepSigmas": "WaDi One-Step Sigmas",
    "WaDiOneStepSampler": "WaDi One-Step Sampler",
    "WaDiMergeSave": "WaDi Merge & Save Checkpoint",
    "WaDiExportLoRA": "WaDi Export LoRA",
    "WaDiTrainLoRaD": "WaDi Train LoRaD (DreamBooth)",
    "WaDiDistill": "WaDi Distill (one-step LoRaD)",
}
