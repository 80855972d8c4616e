"""Peak memory of reading an SD1.5 teacher, this tree against an earlier commit, side by side in one run.

    python benchmarks/load_memory.py                  # against d535756, the last commit that read the UNet as float32
    python benchmarks/load_memory.py --before HEAD~1

A full-size random-weight SD1.5 checkpoint is written once, as users have it: a single file (fp16, UNet, CLIP-L and
VAE, as SD1.5 checkpoints are shared), the same model as a diffusers folder (float32, as diffusers' SD1.5 folders
are) and its UNet alone as a whole-UNet state dict (float32, as the authors release their one-step UNets, read with
``--unet``). Then, each in its own process and in both trees (the earlier one checked out with ``git worktree``):

- ``distill``: ``wadi distill``'s set-up before its first step (the paper's recipe, bf16 weights, gradient
  checkpointing): the teacher read, student and fake adapters made, the prompts encoded;
- ``read``: ``load_components`` of the single file in float32, as ``wadi generate`` and ``wadi merge`` read it.

The peak is the process's maximum resident memory (Linux's VmHWM), after importing torch and the library (that part
is printed apart and is the same in both trees).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "d535756"  # the last commit that read the teacher's UNet in float32 and cast it afterwards
CASES = [("distill", "single file (fp16)"), ("distill", "diffusers folder (float32)"),
         ("distill", "single file + whole-UNet file (float32)"), ("read", "single file (fp16)")]


def write_teacher(folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """The model paths of one random SD1.5 (and the whole-UNet file read in place of its UNet) by label; a tokenizer
    beside the single file."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from comfy_support import sd15_checkpoint
    from safetensors.torch import save_file

    from wadi_core.models import load_components
    from wadi_core.models.components import save_sd_folder
    from wadi_core.shapes.components import write_tokenizer

    write_tokenizer(folder / "tokenizer")
    single = sd15_checkpoint(folder / "sd15.safetensors")
    components = load_components(single)
    save_sd_folder(components, folder / "sd15-diffusers", unet_dtype=torch.float32)
    whole_unet = folder / "rotated_unet.safetensors"
    save_file({k: v.contiguous() for k, v in components.unet.state_dict().items()}, str(whole_unet))
    (folder / "prompts.txt").write_text("a photo of a dog\na red car on a street\n")
    return {"single file (fp16)": (single, None), "diffusers folder (float32)": (folder / "sd15-diffusers", None),
            "single file + whole-UNet file (float32)": (single, whole_unet)}


def measure(case: str, model: str, backbone: str) -> dict:
    """In this process (the tree on PYTHONPATH): the imports' peak, then the case's."""
    import torch  # noqa: F401
    from distill_memory import resident_peak_gb

    from wadi_core.distill import DistillConfig, Distiller
    from wadi_core.models import load_components

    imported = resident_peak_gb()
    if case == "read":
        load_components(model)
    else:
        config = DistillConfig.from_options(
            model=model, backbone=backbone or None, prompts=str(Path(model).parent / "prompts.txt"),
            out=tempfile.mkdtemp(prefix="wadi-load-"),
            batch_size=1, steps=1, mixed_precision="bf16", gradient_checkpointing=True, report_to="none",
            sample_every=0, checkpoint_every=0)
        Distiller(config, progress=False, log=lambda text: None).close()
    return {"imported_gb": imported, "peak_gb": resident_peak_gb()}


def run(tree: Path, case: str, model: Path, backbone: Path | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", case, str(model), str(backbone or "")],
                         capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONPATH=str(tree)))
    if out.returncode:
        raise SystemExit(f"{case} of {model} in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--measure":
        print(json.dumps(measure(*sys.argv[2:])))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE, help="the commit to compare with")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from cli_startup import earlier_tree
    with tempfile.TemporaryDirectory() as folder:
        print("writing a random-weight SD1.5 (single file, diffusers folder, whole-UNet file) ...", flush=True)
        models = write_teacher(Path(folder))
        with earlier_tree(args.before, Path(folder) / "before") as old:
            print(f"{'what':61s} {'before (GB)':>11s} {'now (GB)':>9s} {'now / before':>13s}")
            for case, kind in CASES:
                before, now = run(old, case, *models[kind]), run(ROOT, case, *models[kind])
                label = f"{'wadi distill set-up' if case == 'distill' else 'read in float32'}, {kind}"
                print(f"{label:61s} {before['peak_gb']:11.2f} {now['peak_gb']:9.2f} "
                      f"{now['peak_gb'] / before['peak_gb']:13.2f}", flush=True)
            print(f"(importing torch and wadi_core alone peaks at {now['imported_gb']:.2f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
