"""``wadi extract``: a LoRaD adapter from a merged model (``--merged``, e.g. the authors' released one-step UNets),
or from the authors' training-time angle files (``--theta kduv.pth``)."""

from __future__ import annotations

from wadi_core.devices import DTYPE_NAMES

from . import argtypes as A
from .commands import summary
from .outputs import writes


def rank(text: str):
    return "auto" if text == "auto" else A.positive_int(text)


def register(sub) -> None:
    p = sub.add_parser("extract", help=summary("extract"))
    p.add_argument("--model", help="the base the adapter turns (a diffusers folder, a single-file checkpoint or a "
                                   "Hugging Face Hub id)")
    A.hidden_alias(p, "--base", "model")
    A.backbone_option(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--merged", metavar="FILE", help="the merged model: a state dict of the whole UNet / "
                                                         "transformer (rotated_unet-sdv1-5.safetensors), or a "
                                                         "checkpoint of the same architecture")
    source.add_argument("--theta", metavar="FILE", help="the authors' angle file (kduv.pth or ema_kduv.pth)")
    p.add_argument("--out", required=True, help="the adapter to write (.safetensors)")
    p.add_argument("--rank", type=rank, help="the rank of the fit: a number, or auto (per layer, the smallest "
                                             "within --max-error); default: the paper's for the family")
    p.add_argument("--max-error", type=A.positive, default=1e-3,
                   help="--rank auto: the largest relative error of a layer's weights (default 1e-3)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES,
                   help="the factors' type in the file (fp16: half the size; the errors reported are its own)")
    p.add_argument("--allow-residual", action="store_true",
                   help="write what no rotation explains to OUT.residual.safetensors instead of refusing")
    p.add_argument("--allow-pickle", action="store_true", help="read a --theta file (a pickle; weights only)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


@writes("out")
def run(args) -> int:
    from wadi_core.extract import TOLERANCE_ULPS, convert_theta, extract
    from wadi_core.models import open_checkpoint

    if not args.model:
        raise ValueError("give the base model: --model PATH (the model the released file was distilled from)")
    if not args.merged and not args.theta:
        raise ValueError("give what to extract from: --merged FILE (a merged model) or --theta FILE (kduv.pth)")
    base = open_checkpoint(args.model, args.backbone)
    if args.theta:
        path = convert_theta(args.theta, base, args.out, args.allow_pickle, args.overwrite)
        print(f"wrote {path}: the angles of {args.theta} as a LoRaD adapter for {base.label}")
        return 0
    from wadi_core.devices import torch_dtype

    dtype = torch_dtype(args.dtype)
    result = extract(base, args.merged, args.out, args.rank, args.max_error, args.allow_residual, args.overwrite,
                     progress=not args.quiet, dtype=dtype)
    worst = result.worst
    print(f"wrote {result.path}: {len(result.layers)} layers at rank {result.rank}, {result.parameters:,} values, "
          f"{result.file_bytes / 2 ** 20:.1f} MiB")
    print(f"weights reproduced to {result.weight_error:.3e} relative overall (worst layer {worst.name}: "
          f"{worst.weight_error:.3e}); pair norms checked to {result.norm_tolerance:.1e} relative "
          f"({TOLERANCE_ULPS} units in the last place of the merged file's dtype)")
    for fit in sorted(result.layers, key=lambda f: -f.weight_error)[:5]:
        print(f"  {fit.name}: rank {fit.rank}, weight error {fit.weight_error:.3e}, largest angle "
              f"{fit.max_angle:.3g} rad")
    if result.residual_path:
        print(f"wrote {result.residual_path}: {len(result.residual)} tensors no rotation explains "
              f"(rotations explain {result.explained:.1%} of the change)")
    return 0
