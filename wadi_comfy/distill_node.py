"""WaDi Distill: distil the model chosen in the graph into a one-step LoRaD adapter, inside ComfyUI.

The node runs the library's distiller (``wadi_core.distill``, the same as ``wadi distill``) on the model's
file -- a checkpoint from models/checkpoints or a diffusers folder from models/diffusers -- with the recipe of
the model's family, and saves the student to models/loras for ``WaDi Load LoRaD``. ComfyUI's progress bar
follows the steps and shows the teacher-vs-student grid whenever one is drawn. ComfyUI's Stop is honoured
between steps: the run writes a checkpoint in output/wadi_distill/NAME/ and stops; queueing the node again
with the same adapter name (and the same settings) continues from there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

CATEGORY = "WaDi"


def _diffusers_folders() -> list[str]:
    import folder_paths
    found = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            for folder, _, files in os.walk(root, followlinks=True):
                if "model_index.json" in files:
                    found.append(os.path.relpath(folder, root))
    return sorted(found)


def model_names() -> list[str]:
    import folder_paths
    return folder_paths.get_filename_list("checkpoints") + _diffusers_folders()


def model_path(name: str) -> str:
    """A checkpoint's file or a diffusers folder, by the name the node lists."""
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", name)
    if path is not None:
        return path
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isfile(os.path.join(root, name, "model_index.json")):
            return os.path.join(root, name)
    raise FileNotFoundError(f"'{name}' is neither in models/checkpoints nor a diffusers folder in models/diffusers")


def use_comfy_vocabulary() -> None:
    """A checkpoint in models/checkpoints has no tokenizer beside it: let wadi read CLIP's vocabulary from ComfyUI's
    own copy (comfy/sd1_tokenizer, which its SD1.x, SD2.x and SDXL text encoders use)."""
    import comfy.sd1_clip

    from wadi_core.models.single_file import add_tokenizer_folder
    add_tokenizer_folder(Path(comfy.sd1_clip.__file__).parent / "sd1_tokenizer")


def image_tensor(path: Path) -> torch.Tensor:
    """A PNG as ComfyUI's IMAGE: float [1, H, W, 3] in [0, 1]."""
    from PIL import Image
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def save_to_loras(student: Path, name: str) -> tuple[str, str]:
    """Copy the student to models/loras as NAME.safetensors (numbered if taken; written under a temporary name and
    renamed, so a half-copied file is never listed)."""
    import folder_paths
    folder = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(folder, exist_ok=True)
    file, counter = f"{name}.safetensors", 1
    while os.path.exists(os.path.join(folder, file)):
        counter += 1
        file = f"{name}_{counter:03d}.safetensors"
    target = os.path.join(folder, file)
    partial = os.path.join(folder, f".{file}.partial")
    shutil.copyfile(student, partial)
    os.replace(partial, target)
    return file, target


class WaDiDistill:
    DESCRIPTION = ("Distil a model into a one-step LoRaD student with WaDi (VSD with LoRaD on the student and the fake "
                   "score model), using the recipe of the model's family. The student is saved to models/loras; link "
                   "adapter_name into WaDi Load LoRaD's adapter_file. Stop writes a checkpoint; queue again with the "
                   "same adapter name to continue. Distilling SD1.5 as the paper does takes GPU-days.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("adapter_name", "preview")
    FUNCTION = "distill"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (model_names(), {"tooltip": "the teacher: a checkpoint (models/checkpoints) or a diffusers "
                                                      "folder (models/diffusers)"}),
            "prompts": ("STRING", {"multiline": True, "default": "",
                                   "tooltip": "training prompts, one per line (the embedded model has its own: "
                                              "leave empty)"}),
            "steps": ("INT", {"default": 0, "min": 0, "max": 1_000_000,
                              "tooltip": "training steps; 0 takes the recipe's (the paper's 20,000 for SD)"}),
            "student_rank": ("INT", {"default": 0, "min": 0, "max": 1024,
                                     "tooltip": "LoRaD rank of the student; 0 takes the recipe's"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1,
                             "tooltip": "seeds the adapters, the prompts' order and the noise"}),
            "adapter_name": ("STRING", {"default": "wadi_student",
                                        "tooltip": "the student's file name in models/loras, and the run's name"}),
            "continue_run": ("BOOLEAN", {"default": True,
                                         "tooltip": "continue a stopped run of this name from its checkpoint; off "
                                                    "starts it again"}),
        }}

    def distill(self, model_name, prompts, steps, student_rank, seed, adapter_name, continue_run):
        import folder_paths

        from wadi_core import fileio
        from wadi_core.distill import DistillConfig

        name = adapter_name.strip()
        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"adapter_name '{adapter_name}' is not a file name; give a plain name such as "
                             "wadi_student")
        runs = Path(folder_paths.get_output_directory()) / "wadi_distill"
        run = runs / name
        runs.mkdir(parents=True, exist_ok=True)
        prompt_file = None
        lines = [line.strip() for line in prompts.splitlines() if line.strip()]
        if lines:
            prompt_file = fileio.write_text(runs / f"{name}.prompts.txt", "\n".join(lines) + "\n", overwrite=True)
        resume = bool(continue_run) and (run / "checkpoint").is_dir()
        use_comfy_vocabulary()
        options = dict(out=str(run), model=model_path(model_name), prompts=str(prompt_file) if prompt_file else None,
                       seed=int(seed), report_to="none", resume=resume, overwrite=not resume)
        if steps:
            options["steps"] = int(steps)
        if student_rank:
            options["student_rank"] = int(student_rank)
        config = DistillConfig.from_options(**options).resolved()
        every = max(1, min(100, config.steps // 4))
        config = DistillConfig.from_options(**{**config.options(), "checkpoint_every": every, "sample_every": every})

        with torch.inference_mode(False), torch.enable_grad():  # ComfyUI runs nodes in inference mode
            return self._run(config, run, name, model_name)

    @staticmethod
    def _run(config, run: Path, name: str, model_name: str):
        import comfy.model_management
        import comfy.utils

        from wadi_core.distill import Distiller

        distiller = Distiller(config, progress=False, log=lambda text: print(f"[WaDi Distill] {text}"))
        bar = comfy.utils.ProgressBar(config.steps)
        bar.update_absolute(distiller.step, config.steps)
        shown = [None]

        def on_step(record):
            preview = None
            grid = run / "samples" / "latest.png"
            if grid.is_file() and grid.stat().st_mtime != shown[0]:
                from PIL import Image
                shown[0] = grid.stat().st_mtime
                with Image.open(grid) as image:
                    preview = ("JPEG", image.convert("RGB"), 768)
            bar.update_absolute(distiller.step, config.steps, preview)

        student = distiller.run(should_stop=comfy.model_management.processing_interrupted, on_step=on_step)
        if student is None:  # Stop pressed: the checkpoint is written; ComfyUI ends the prompt here
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise RuntimeError(f"the run stopped at step {distiller.step} without a checkpoint; see the console")
        file, _ = save_to_loras(Path(student), name)
        grid = run / "samples" / "latest.png"
        preview = image_tensor(grid) if grid.is_file() else torch.zeros(1, 64, 64, 3)
        report = f"distilled {model_name} for {config.steps} steps ({config.recipe} recipe); saved models/loras/{file}"
        return {"ui": {"text": [report]}, "result": (file, preview)}
