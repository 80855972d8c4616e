"""Can the judge still read the prompt from a VAE's reconstructions of renders? The ceiling a teacher trained on
that VAE can reach: what the decoder blurs away (a square's corners, a small object), no UNet can draw.

    python research/vae_check.py                          # the shipped model's VAE
    python research/vae_check.py --model runs/teacher-model
    python research/vae_check.py --work runs/teacher      # the VAE in a training run's state (also mid-run)

Renders the held-out prompts of `wadi eval` (same prompts and seeds), encodes them (posterior mean), decodes, and
prints the judge's per-attribute accuracy on the reconstructions. Results: docs/lab/shapes.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from wadi_core.evaluate import reference_renders  # noqa: E402
from wadi_core.models import decode, encode  # noqa: E402
from wadi_core.shapes import sample_prompts  # noqa: E402
from wadi_core.shapes.components import MODEL_DIR, VAE_CONFIG  # noqa: E402
from wadi_core.shapes.judge import accuracy_report  # noqa: E402

SHOWN = ("single/color", "single/shape", "single/size", "single/position", "relation/color", "relation/shape",
         "relation/relation", "all")


def load_vae(model: str | None, work: str | None):
    from diffusers import AutoencoderKL
    if work is None:
        if not (Path(model) / "vae" / "config.json").is_file():
            raise SystemExit(f"{Path(model) / 'vae' / 'config.json'} does not exist: --model must be a model folder "
                             "with a vae/ subfolder (as `wadi generate --model` takes)")
        return AutoencoderKL.from_pretrained(model, subfolder="vae")
    state_file = Path(work) / "state.pt"
    if not state_file.is_file():
        raise SystemExit(f"{state_file} does not exist: --work must be a folder of wadi_core/shapes/train_teacher.py")
    vae = AutoencoderKL(**VAE_CONFIG)
    vae.load_state_dict(torch.load(state_file, weights_only=False)["vae"])
    return vae


@torch.no_grad()
def reconstruction_report(vae, num_prompts: int, seed: int = 0) -> dict:
    captions = [p.caption() for p in sample_prompts(num_prompts, "heldout", seed=seed)]
    renders = reference_renders(captions, seed)
    components = SimpleNamespace(vae=vae.eval())
    return accuracy_report(decode(components, encode(components, renders)), captions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", default=str(MODEL_DIR), help="a model folder with a vae/ subfolder")
    source.add_argument("--work", help="a teacher training run folder (its state.pt)")
    p.add_argument("--num-prompts", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    report = reconstruction_report(load_vae(args.model, args.work), args.num_prompts, args.seed)
    print("  ".join(f"{key} {report[key]:.1%}" for key in SHOWN if key in report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
