"""export-lora's SVD on SD1.5-size layers: the truncated (randomised, seeded) SVD it uses against a full SVD, side by
side in one process.

    python benchmarks/export_lora_svd.py [--rank 4] [--layers 60]

For the first ``--layers`` layers of SD1.5's ``unet-student`` preset (shapes from a UNet on the meta device), the
change of a random LoRaD rotation (rank 8, angles of about 0.05) is approximated at ``--rank`` both ways. Prints
the seconds of each, their ratio, and the relative error of each over those layers (the error of the factors,
||delta - up down||_F / ||delta||_F).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from wadi_core.lorad import functional as LF
    from wadi_core.lorad.presets import select_targets
    from wadi_core.models.families import build_on_meta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--layers", type=int, default=60)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    shapes = [tuple(m.weight.shape) for _, m in select_targets(build_on_meta("sd15"), preset="unet-student")]
    seconds = {"full": 0.0, "truncated": 0.0}
    error = {"full": 0.0, "truncated": 0.0}
    total = 0.0
    for shape in shapes[:args.layers]:
        weight = torch.randn(shape, generator=generator) * 0.02
        (up_shape, down_shape) = LF.adapter_shapes(shape, 8)
        up = torch.randn(up_shape, generator=generator) * 0.08
        down = torch.randn(down_shape, generator=generator) * 0.08
        d = (LF.rotate(weight, up, down) - weight).reshape(shape[0], -1)
        total += float(d.pow(2).sum())
        for way in ("full", "truncated"):
            start = time.perf_counter()
            if way == "full":
                u, s, vh = torch.linalg.svd(d, full_matrices=False)
                u, s, vh = u[:, :args.rank], s[:args.rank], vh[:args.rank]
            else:
                u, s, vh = LF.truncated_svd(d, args.rank)
            seconds[way] += time.perf_counter() - start
            error[way] += float((d - (u * s) @ vh).pow(2).sum())
    n = min(args.layers, len(shapes))
    print(f"{n} SD1.5 unet-student layers, rank {args.rank}, torch {torch.__version__}, {torch.get_num_threads()} "
          "threads")
    for way in ("full", "truncated"):
        print(f"  {way:9s} SVD: {seconds[way]:6.2f} s, relative error {math.sqrt(error[way] / total):.4f}")
    print(f"  truncated / full time: {seconds['truncated'] / seconds['full']:.2f}x")


if __name__ == "__main__":
    main()
