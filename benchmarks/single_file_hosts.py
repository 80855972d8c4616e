"""Full-size single files read by wadi and by ComfyUI: the same prompt embeddings?

    python benchmarks/single_file_hosts.py                 # sd15, sd21 and sdxl
    python benchmarks/single_file_hosts.py --families sd21

For each family a random-weight single file is written as released ones are laid out (fp16; SD2.x's text encoder
with all 24 OpenCLIP layers, its projection and logit scale), with ComfyUI's copy of CLIP's vocabulary beside it as
``tokenizer/``. In one process per family, ``wadi_core.models.load_components`` reads it (timed) and encodes two
prompts; then ComfyUI (the copy the tests install, ``scripts/setup.sh --test``) reads the same file with its own
model detection and encodes the same prompts. Printed: the largest difference of the embeddings (and of SDXL's
pooled embedding) against their largest value, the prediction type and image size each reader chose, and the
process's peak memory. SDXL's UNet is read in bf16 by wadi and not built by ComfyUI, to stay within 24 GB.
Needs about 60 GB of free disk for the three files in a temporary folder, removed afterwards.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a cat", "a red car on a street at night"]


def compare(family: str, folder: Path) -> dict:
    """In this process: write the file, read it with wadi, then with ComfyUI; the differences."""
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_support import import_comfy_in_process, random_checkpoint, require_comfy

    from wadi_core.models import load_components

    path = random_checkpoint(folder / f"{family}.safetensors", family)
    shutil.copytree(require_comfy() / "comfy" / "sd1_tokenizer", folder / "tokenizer", dirs_exist_ok=True)
    start = time.perf_counter()
    ours = load_components(path, unet_dtype=torch.bfloat16 if family == "sdxl" else None)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        text = ours.encode_prompts(PROMPTS)
    size = ours.unet.config.sample_size * 2 ** (len(ours.vae.config.block_out_channels) - 1)
    result = {"family": family, "read_s": seconds, "wadi": f"{ours.scheduler.config.prediction_type}, {size} px"}
    del ours
    import_comfy_in_process(folder / "comfy-models")
    import comfy.sd
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True,
                                                              output_model=family != "sdxl")
    result["comfy"] = model.model.model_type.name if model is not None else "(UNet not built)"
    hidden, pooled = [], []
    for i, prompt in enumerate(PROMPTS):
        cond, extra = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)
        tokens, width = cond.shape[1:]
        hidden.append(float((text[i, :tokens, :width] - cond[0].float()).abs().max() / cond.abs().max()))
        if family == "sdxl":  # the last row of wadi's packed SDXL text is the pooled embedding
            pooled.append(float((text[i, -1, :extra.shape[-1]] - extra[0].float()).abs().max() / extra.abs().max()))
    result["hidden"] = max(hidden)
    result["pooled"] = max(pooled) if pooled else None
    result["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def row(r: dict) -> str:
    pooled = f"{r['pooled']:.1e}" if r["pooled"] is not None else "-"
    return (f"{r['family']:7} {r['read_s']:8.1f}s  {r['wadi']:22} {r['comfy']:18} {r['hidden']:10.1e} {pooled:>11} "
            f"{r['peak_gb']:6.1f} GB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from benchmarks import per_family
    per_family.main(__file__, __doc__, compare, f"{'family':7} {'wadi read':>9}  {'wadi':22} {'ComfyUI':18} "
                    f"{'text diff':>10} {'pooled diff':>11} {'peak':>8}", row)
