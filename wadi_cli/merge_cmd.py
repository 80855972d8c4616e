"""``wadi merge`` (bake adapters into a checkpoint) and ``wadi export-lora`` (SVD to a plain LoRA)."""

from __future__ import annotations

import torch

from wadi_core.merge import export_lora, merge_checkpoint, parse_adapter_spec
from . import argtypes as A

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _add_common(p) -> None:
    p.add_argument("--base", required=True,
                   help="the model the adapters were trained on: a diffusers folder or a single .safetensors")
    p.add_argument("--adapter", required=True, action="append", metavar="FILE[:STRENGTH]",
                   help="a LoRaD adapter, optionally with a strength (default 1); repeat to stack adapters")
    p.add_argument("--out", required=True, help="output path")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    p = sub.add_parser("merge", help="bake LoRaD adapters into a model (diffusers folder or single file)")
    _add_common(p)
    p.add_argument("--format", default="auto", choices=("auto", "diffusers", "single-file"),
                   help="auto: single-file when --out ends in .safetensors, else a diffusers folder")
    p.set_defaults(run=run_merge)

    p = sub.add_parser("export-lora", help="approximate LoRaD adapters by a standard LoRA (SVD of the delta)")
    _add_common(p)
    p.add_argument("--rank", type=A.positive_int, default=64, help="LoRA rank (default 64)")
    p.add_argument("--dtype", default="fp16", choices=tuple(DTYPES), help="tensor dtype in the file")
    p.set_defaults(run=run_export)


def run_merge(args) -> int:
    adapters = [parse_adapter_spec(s) for s in args.adapter]
    out = merge_checkpoint(args.base, adapters, args.out, args.format, args.overwrite, progress=not args.quiet)
    print(f"wrote merged model {out}")
    return 0


def run_export(args) -> int:
    adapters = [parse_adapter_spec(s) for s in args.adapter]
    result = export_lora(args.base, adapters, args.out, args.rank, DTYPES[args.dtype], args.overwrite,
                         progress=not args.quiet)
    print(f"wrote LoRA {result.path}: {result.layers} layers, rank {result.rank}")
    print(f"relative approximation error ||delta - LoRA||/||delta||: {result.relative_error:.4%} overall, "
          f"worst layer {result.worst_layer} {result.worst_error:.4%}")
    return 0
