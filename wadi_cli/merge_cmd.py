"""``wadi merge`` (bake adapters into a checkpoint) and ``wadi export-lora`` (SVD to a plain LoRA)."""

from __future__ import annotations

from wadi_core.devices import DTYPE_NAMES

from . import argtypes as A
from .commands import summary


def _add_common(p) -> None:
    p.add_argument("--model", help="the model the adapters were trained on: a diffusers folder, a single "
                                   ".safetensors or a Hugging Face Hub id (required)")
    A.hidden_alias(p, "--base", "model")
    A.backbone_option(p)
    p.add_argument("--adapter", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a LoRaD adapter, optionally with a strength (default 1); repeat to stack adapters (merge "
                        "takes none with --unet: the released UNet written into --model's layout)")
    p.add_argument("--out", required=True, help="output path")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser("merge", help=summary("merge"))
    _add_common(p)
    p.add_argument("--format", default="auto", choices=("auto", "diffusers", "single-file"),
                   help="auto: single-file when --out ends in .safetensors, else a diffusers folder")
    p.set_defaults(run=run_merge)

    p = sub.add_parser("export-lora", help=summary("export-lora"))
    _add_common(p)
    p.add_argument("--rank", type=A.positive_int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--dtype", default="fp16", choices=DTYPE_NAMES, help="tensor dtype in the file")
    p.set_defaults(run=run_export)


def model_and_adapters(args):
    """The base model (with its --unet replacement) as a checkpoint, and the adapters with their strengths."""
    from wadi_core.merge import parse_adapter_spec
    from wadi_core.models import open_checkpoint

    if not args.model:
        raise ValueError("give the base model the adapters are for: --model PATH")
    return open_checkpoint(args.model, args.backbone), [parse_adapter_spec(s) for s in args.adapter]


def run_merge(args) -> int:
    from wadi_core.merge import merge_checkpoint

    model, adapters = model_and_adapters(args)
    out = merge_checkpoint(model, adapters, args.out, args.format, args.overwrite, progress=not args.quiet)
    print(f"wrote merged model {out}")
    return 0


def run_export(args) -> int:
    from wadi_core.devices import torch_dtype
    from wadi_core.merge import export_lora

    model, adapters = model_and_adapters(args)
    dtype = torch_dtype(args.dtype)
    result = export_lora(model, adapters, args.out, args.rank, dtype, args.overwrite, progress=not args.quiet)
    print(f"wrote LoRA {result.path}: {result.layers} layers, rank {result.rank}")
    print(f"relative approximation error ||delta - LoRA||/||delta||: {result.relative_error:.4%} overall, "
          f"worst layer {result.worst_layer} {result.worst_error:.4%}")
    return 0
