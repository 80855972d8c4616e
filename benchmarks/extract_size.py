"""How big an extracted adapter of a released SD1.5 one-step UNet is, and how well it reproduces the file.

A full-size SD1.5 UNet with random weights is turned by a random rank-256 LoRaD rotation of every unet-student layer
and saved as the authors release theirs (the whole UNet's state dict, fp16); ``wadi extract`` then recovers the
adapter at rank 256 in fp16. Prints the two file sizes, their ratio, the weight error and the time.

    python benchmarks/extract_size.py            # about 4 GB of disk in a temporary folder
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wadi_core.extract import extract
from wadi_core.lorad import functional as LF
from wadi_core.lorad.presets import select_targets
from wadi_core.models import keys
from wadi_core.models.families import sd15_unet


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=256)
    args = p.parse_args()
    torch.manual_seed(0)
    unet = sd15_unet()
    base_state = {k: v.half() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    rotated = dict(base_state)
    for name, module in select_targets(unet, preset="unet-student"):
        (up_shape, down_shape) = LF.adapter_shapes(module.weight.shape, args.rank)
        theta = (torch.randn(up_shape, generator=g) * 0.02) @ (torch.randn(down_shape, generator=g) * 0.02)
        rotated[f"{name}.weight"] = LF.rotate_by_angles(base_state[f"{name}.weight"].float(), theta).half()
    del unet
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        names = keys.unet_name_map(base_state)
        base = folder / "sd15.safetensors"  # the base as a single file (LDM names), as users have it
        save_file({keys.LDM_UNET + names[k]: v.contiguous() for k, v in base_state.items()}, str(base))
        released = folder / "rotated_unet-sdv1-5.safetensors"
        save_file({k: v.contiguous() for k, v in rotated.items()}, str(released))
        start = time.perf_counter()
        result = extract(base, released, folder / "adapter.safetensors", rank=args.rank, progress=False,
                         dtype=torch.float16)
        seconds = time.perf_counter() - start
        unet_bytes = released.stat().st_size
        print(f"released UNet (fp16): {unet_bytes / 1e9:.2f} GB; as fp32 it would be {2 * unet_bytes / 1e9:.2f} GB")
        print(f"extracted adapter, rank {result.rank}, fp16: {result.file_bytes / 1e6:.1f} MB "
              f"({result.parameters:,} values, {len(result.layers)} layers), "
              f"{result.file_bytes / unet_bytes:.3f} of the released file")
        print(f"weights reproduced to {result.weight_error:.2e} relative (worst layer {result.worst.name}: "
              f"{result.worst.weight_error:.2e}); extraction took {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
