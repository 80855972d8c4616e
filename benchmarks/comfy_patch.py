"""Applying a LoRaD adapter in ComfyUI vs a LoRA through the stock loader, on a full-size SD1.5.

    python benchmarks/comfy_patch.py --work /tmp/comfy-patch-bench

Builds (once, in --work) a random-weight SD1.5 checkpoint, a rank-256 LoRaD adapter and a rank-64
LoRA (kohya keys) on the same layers (the unet-student preset), then measures each in a fresh
interpreter inside a real ComfyUI (the one the tests use): the seconds ``ModelPatcher`` takes to
patch every weight (median of 3), the peak memory added by patching, and the memory the patch
objects themselves hold. Goal: LoRaD <= 1.5x the LoRA patch time, and no full-size delta kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def write_files(work: Path) -> dict[str, Path]:
    import torch

    from comfy_support import random_lorad, sd15_checkpoint
    from wadi_core import fileio
    from wadi_core.lorad.io import read_adapter

    files = {"checkpoint": work / "sd15.safetensors", "lorad": work / "lorad-r256.safetensors",
             "lora": work / "lora-r64.safetensors"}
    if not files["checkpoint"].exists():
        sd15_checkpoint(files["checkpoint"])
    if not files["lorad"].exists():
        random_lorad(files["lorad"], rank=256, std=0.01)
    if not files["lora"].exists():
        generator = torch.Generator().manual_seed(0)
        tensors = {}
        for key, (up, down) in read_adapter(files["lorad"]).layers.items():  # the same layers
            out_features, in_features = up.shape[0], down.shape[1] * 2
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, 64, generator=generator) * 0.01
            tensors[f"{key}.lora_down.weight"] = torch.randn(64, in_features, generator=generator) * 0.01
            tensors[f"{key}.alpha"] = torch.tensor(64.0)
        fileio.save_safetensors(tensors, files["lora"], {}, overwrite=True)
    return files


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024 ** 3


class PeakMemory:
    """The highest resident memory seen while the block runs (sampled every 5 ms by a thread)."""

    def __enter__(self):
        import threading
        self.gb, self._running = rss_gb(), True

        def poll():
            while self._running:
                self.gb = max(self.gb, rss_gb())
                time.sleep(0.005)
        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.gb = max(self.gb, rss_gb())


def measure(kind: str, work: Path) -> dict:
    """Run in a child: load the checkpoint in ComfyUI, add the patches, time patching every weight."""
    from comfy_support import import_comfy_in_process

    import_comfy_in_process(work / "comfy-models")
    import comfy.sd
    import comfy.utils

    import wadi_comfy
    from wadi_comfy.patching import lorad_patches
    from wadi_core.lorad.io import read_adapter

    wadi_comfy.register_with_comfy()
    files = write_files(work)
    model, _, _, _ = comfy.sd.load_checkpoint_guess_config(str(files["checkpoint"]), output_vae=False,
                                                           output_clip=False)
    if kind == "lorad":
        patches, strength = lorad_patches(model, read_adapter(files[kind]), 1.0)
        patched = model.clone()
        patched.add_patches(patches, strength)
    else:
        patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(files[kind])), 1.0, 0)
    held = sum(t.numel() * t.element_size() for p in patched.patches.values() for entry in p
               for t in _tensors(entry[1]))
    seconds, peaks = [], []
    for _ in range(3):
        before = rss_gb()
        with PeakMemory() as peak:
            start = time.perf_counter()
            patched.patch_model(force_patch_weights=True)
            seconds.append(time.perf_counter() - start)
        peaks.append(peak.gb - before)
        patched.unpatch_model()
    return {"kind": kind, "layers": len(patched.patches), "seconds": statistics.median(seconds),
            "peak_added_gb": max(peaks), "patch_objects_mb": held / 1024 ** 2}


def _tensors(value):
    """Every tensor inside a patch value (a weight-adapter object or a nested tuple)."""
    import torch
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif hasattr(value, "weights"):
        yield from _tensors(value.weights)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the 2 GB checkpoint and the adapters (kept)")
    p.add_argument("--measure", choices=("lorad", "lora"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.measure:
        print(json.dumps(measure(args.measure, work)))
        return 0
    write_files(work)
    results = {}
    for kind in ("lora", "lorad"):
        out = subprocess.run([sys.executable, __file__, "--work", str(work), "--measure", kind], check=True,
                             capture_output=True, text=True).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
    for kind, label in (("lora", "LoRA rank 64, stock loader"), ("lorad", "LoRaD rank 256, WaDi loader")):
        r = results[kind]
        print(f"{label:30s} {r['layers']} layers: {r['seconds']:.2f} s to patch, peak +{r['peak_added_gb']:.2f} GB, "
              f"patch objects {r['patch_objects_mb']:.0f} MB")
    print(f"LoRaD / LoRA patch time: {results['lorad']['seconds'] / results['lora']['seconds']:.2f}x (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
