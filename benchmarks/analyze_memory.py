"""Peak memory of ``wadi analyze`` on an SD1.5-sized pair, against loading both models whole.

    python benchmarks/analyze_memory.py --work /tmp/analyze-bench

Writes two SD1.5-shaped UNets (random fp16 weights, the second a slightly turned copy of the
first; about 1.7 GB each) as single-file diffusers-named checkpoints, then measures in child
processes (ru_maxrss): (a) ``wadi analyze --no-swap`` streaming one layer at a time, (b) reading
both files whole in float32, as an analysis that builds both models would. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

LOAD_WHOLE = """
import sys, torch
from safetensors.torch import load_file
models = [{k: v.float() for k, v in load_file(p).items()} for p in sys.argv[1:3]]
print(sum(v.numel() for m in models for v in m.values()))
"""


def write_pair(work: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from wadi_core.models.families import build_on_meta

    base, other = work / "sd15_base.safetensors", work / "sd15_other.safetensors"
    if base.exists() and other.exists():
        return base, other
    shapes = {k: v.shape for k, v in build_on_meta("sd15").state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=generator) * 0.02).half() for k, s in shapes.items()}
    save_file(tensors, str(base))
    for k, v in tensors.items():  # a small change of every weight, in place to keep one copy in memory
        v.add_((torch.randn(v.shape, generator=generator) * 0.002).half())
    save_file(tensors, str(other))
    return base, other


def peak_of(command: list[str]) -> tuple[float, float]:
    """``(peak resident GB, seconds)`` of a child process (called once per interpreter: RUSAGE_CHILDREN
    is a running maximum over all children)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2, seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for the two 1.7 GB checkpoints (kept for reruns)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base, other = write_pair(work)
    # each measurement in a fresh interpreter, so that one peak does not hide the other
    whole = subprocess.run([sys.executable, __file__, "--measure", "whole", str(base), str(other)],
                           check=True, capture_output=True, text=True).stdout.split()
    stream = subprocess.run([sys.executable, __file__, "--measure", "stream", str(base), str(other), str(work / "out")],
                            check=True, capture_output=True, text=True).stdout.split()
    whole_gb, whole_s = map(float, whole[-2:])
    stream_gb, stream_s = map(float, stream[-2:])
    print(f"loading both models whole (float32):  peak {whole_gb:.2f} GB, {whole_s:.0f} s")
    print(f"wadi analyze --no-swap (streaming):   peak {stream_gb:.2f} GB, {stream_s:.0f} s")
    print(f"streaming uses {stream_gb / whole_gb:.2f}x the memory of loading both models")
    return 0


def measure(kind: str, paths: list[str]) -> None:
    if kind == "whole":
        command = [sys.executable, "-c", LOAD_WHOLE, *paths[:2]]
    else:
        command = [sys.executable, "-m", "wadi_cli.cli", "analyze", paths[0], paths[1], "--out", paths[2],
                   "--no-swap", "--overwrite", "--quiet"]
    peak, seconds = peak_of(command)
    print(peak, seconds)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        measure(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(main())
