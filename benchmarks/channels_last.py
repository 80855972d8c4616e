"""The demo's distillation step with the UNet's kernels channels-last (what ``wadi distill`` does on a CPU) against
the default contiguous layout, side by side in one process.

    python benchmarks/channels_last.py [--steps 4]

One distiller with the embedded world's recipe; its shared backbone is switched between the two layouts (the same
weights, the same arithmetic up to float order) and each layout runs ``--steps`` steps after one warm-up step, in
turns, so that both see the same machine. Prints the mean step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from wadi_core.distill import DistillConfig, Distiller

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = DistillConfig.from_options(out=str(Path(tmp) / "run"), steps=10 * args.steps + 10,
                                            report_to="none", sample_every=0, checkpoint_every=0)
        distiller = Distiller(config, progress=False, log=lambda text: None)
        unet = distiller.teacher.unet
        times = {"channels-last": [], "contiguous": []}
        for _ in range(2):  # in turns: each layout twice
            for layout, memory_format in (("channels-last", torch.channels_last),
                                          ("contiguous", torch.contiguous_format)):
                unet.to(memory_format=memory_format)
                distiller.train_step()  # warm-up in this layout
                started = time.perf_counter()
                for _ in range(args.steps):
                    distiller.train_step()
                times[layout].append((time.perf_counter() - started) / args.steps)
        distiller.close()
    last, plain = (sum(times[k]) / len(times[k]) for k in ("channels-last", "contiguous"))
    print(f"threads: {torch.get_num_threads()}, embedded world's recipe (whole batch 16), {2 * args.steps} timed "
          "steps a layout")
    print(f"contiguous kernels:    {plain:.2f} s/step")
    print(f"channels-last kernels: {last:.2f} s/step")
    print(f"channels-last / contiguous: {last / plain:.2f}x the step time")


if __name__ == "__main__":
    main()
