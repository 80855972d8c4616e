"""Full-size single files merged into diffusers folders: does diffusers' own pipeline draw wadi's one-step image?

    python benchmarks/single_file_diffusers.py                 # sd15, sd21 and sdxl
    python benchmarks/single_file_diffusers.py --families sd15

For each family a random-weight single file is written as released ones are laid out (fp16), with ComfyUI's copy
of CLIP's vocabulary beside it as ``tokenizer/``, and a random LoRaD student for it. ``wadi merge`` of the file and
the student into a folder is timed; then, in the same process and one after the other (to stay within 24 GB),
wadi's one-step image of the folder (``load_components`` and ``onestep.generate``, fp32) and diffusers'
``DiffusionPipeline.from_pretrained(folder)`` called with one step and no guidance (fp32, the same starting noise).
Printed: the pipeline class diffusers chose, the merge's time, both images' time, the largest difference between
the two images (in levels of 255) and the process's peak memory. Random weights draw noise-like images: the
comparison is of the two programs, not of a picture. Needs about 25 GB of free disk (SDXL) in a temporary folder,
removed afterwards.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a cat"


def compare(family: str, folder: Path) -> dict:
    """In this process: write file and student, merge them into a folder, draw with wadi and with diffusers."""
    import gc

    import numpy as np
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_support import random_checkpoint, random_lorad, require_comfy
    from diffusers import DiffusionPipeline

    from wadi_core.merge import merge_checkpoint
    from wadi_core.models import load_components
    from wadi_core.sampling import onestep
    from wadi_core.sampling.latents import initial_latents, latent_shape

    path = random_checkpoint(folder / f"{family}.safetensors", family)
    shutil.copytree(require_comfy() / "comfy" / "sd1_tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    student = random_lorad(folder / "student.safetensors", family=family)
    start = time.perf_counter()
    merged = merge_checkpoint(path, [(student, 1.0)], folder / "merged", progress=False)
    result = {"family": family, "merge_s": time.perf_counter() - start}
    path.unlink()  # disk: the folder holds everything now

    start = time.perf_counter()
    ours = load_components(merged)
    noise = initial_latents([0], latent_shape(ours, 1))
    image = onestep.generate(ours, [PROMPT], [0], progress=False)[0].astype(np.float64)
    result["wadi_s"] = time.perf_counter() - start
    del ours
    gc.collect()

    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(str(merged), torch_dtype=torch.float32)
    result["pipeline"] = type(pipe).__name__
    with torch.no_grad():
        theirs = pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, latents=noise, output_type="np").images[0]
    result["diffusers_s"] = time.perf_counter() - start
    result["size"] = "x".join(map(str, theirs.shape[:2]))
    result["diff"] = float(np.abs(image - theirs * 255).max())
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def row(r: dict) -> str:
    return (f"{r['family']:7} {r['pipeline']:27} {r['size']:>9} {r['merge_s']:6.1f}s {r['wadi_s']:6.1f}s "
            f"{r['diffusers_s']:8.1f}s {r['diff']:10.2f} {r['peak_gb']:6.1f} GB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from benchmarks import per_family
    per_family.main(__file__, __doc__, compare, f"{'family':7} {'pipeline':27} {'size':>9} {'merge':>7} {'wadi':>7} "
                    f"{'diffusers':>9} {'image diff':>10} {'peak':>8}", row)
