"""How long a one-step image of an SD1.5-size model takes, by the backbone's type (``--dtype``), side by side in one run.

    python benchmarks/onestep_speed.py                 # on the GPU when there is one, else the CPU
    python benchmarks/onestep_speed.py --images 8 --teacher

A full-size SD1.5 (UNet, VAE, CLIP ViT-L; random weights, built in memory, nothing read) carries a rank-64 LoRaD
student on every unet-student layer, as ``wadi generate --student`` draws it. For each type (fp32 and bf16 on a
CPU; fp32, fp16 and bf16 on a GPU) the UNet is cast, one image is drawn to warm up, then ``--images`` images of
512 px one after another (batch 1), each timed whole (text encoding, the UNet's one step, the VAE's decoding):
printed are the median seconds an image and the ratio to fp32, and the VAE's share (it stays fp32). ``--teacher`` also times the teacher's 25 DDIM
steps with CFG 7.5 (fp32 and the fastest type), the speed-up a one-step student gives. The first image after the
adapter is attached is printed apart: it builds every rotated weight once (they are kept until the angles change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sd15_components(tokenizer_dir: Path):
    """SD1.5's parts at full size with random weights, in float32 on the CPU."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from wadi_core.models.components import Components
    from wadi_core.models.families import sd15_unet
    from wadi_core.models.single_file import CLIP_L, SD_SCHEDULER, SD_VAE
    from wadi_core.shapes.components import write_tokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer(tokenizer_dir)), model_max_length=77)
    parts = (CLIPTextModel(CLIPTextConfig(**CLIP_L)), AutoencoderKL(**SD_VAE), sd15_unet())
    for part in parts:
        part.eval().requires_grad_(False)
    return Components(tokenizer, *parts, DDPMScheduler.from_config(SD_SCHEDULER))


def timed(draw, images: int) -> list[float]:
    seconds = []
    for i in range(images):
        start = time.perf_counter()
        draw(i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images timed per type (default 4)")
    parser.add_argument("--teacher", action="store_true", help="also time the teacher's 25 steps with CFG")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    from diffusers.utils import logging

    from wadi_core import lorad
    from wadi_core.devices import resolve, torch_dtype
    from wadi_core.models.vae import decode
    from wadi_core.sampling import MultiStep, OneStep

    logging.set_verbosity_error()  # (casting a built UNet: diffusers' note that from_pretrained(torch_dtype=) is usual)

    device = resolve(args.device)
    names = ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16")
    with tempfile.TemporaryDirectory() as folder:
        components = sd15_components(Path(folder) / "tokenizer")
    lorad.attach(components.unet, rank=64, preset="unet-student")
    with torch.no_grad():
        for p in lorad.trainable_parameters(components.unet):
            p.normal_(0, 0.01)
    components.to(device)
    prompt = ["a red circle at the top left"]
    one_step = OneStep(batch_size=1)
    start = time.perf_counter()
    one_step(components, prompt, [0], False)
    first = time.perf_counter() - start
    cpu = f"{torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({cpu})"
    print(f"SD1.5 size, 512 px, batch 1, LoRaD rank 64 on every unet-student layer; {where}, torch {torch.__version__}")
    print(f"first image after attaching (builds the rotated weights), fp32: {first:.2f} s")
    latents = torch.randn(1, 4, 64, 64, device=device)
    with torch.no_grad():
        decoding = statistics.median(timed(lambda i: decode(components, latents), 2))
    print(f"of an image, the VAE's decoding (fp32 in every row): {decoding:.2f} s")
    results = {"device": where, "first_image_s": first, "vae_decode_s": decoding, "one_step": {}, "teacher": {}}
    for name in names:
        components.unet.to(torch_dtype(name))
        one_step(components, prompt, [0], False)  # warm-up: the rotated weights of this type
        seconds = timed(lambda i: one_step(components, prompt, [i], False), args.images)
        results["one_step"][name] = statistics.median(seconds)
        ratio = results["one_step"][name] / results["one_step"]["fp32"]
        print(f"one step, {name}: {results['one_step'][name]:.3f} s an image ({ratio:.2f}x fp32's)", flush=True)
    if args.teacher:
        lorad.detach(components.unet)
        fastest = min(results["one_step"], key=results["one_step"].get)
        for name in dict.fromkeys(("fp32", fastest)):
            components.unet.to(torch_dtype(name))
            teacher = MultiStep(steps=25, guidance=7.5, batch_size=1)
            results["teacher"][name] = statistics.median(
                timed(lambda i: teacher(components, prompt, [i], False), max(1, args.images // 2)))
            print(f"teacher, 25 steps with CFG, {name}: {results['teacher'][name]:.2f} s an image "
                  f"({results['teacher'][name] / results['one_step'][name]:.1f}x the one-step image)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
