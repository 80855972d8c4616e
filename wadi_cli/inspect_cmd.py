"""``wadi inspect A.safetensors``: what a LoRaD adapter contains."""

from __future__ import annotations

import json


from .commands import summary


def register(sub) -> None:
    p = sub.add_parser("inspect", help=summary("inspect"))
    p.add_argument("adapter", help="a LoRaD .safetensors file")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    from wadi_core.lorad.io import describe_adapter

    info = describe_adapter(args.adapter)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"adapter     {info['path']}")
    print(f"family      {info['family']}")
    print(f"preset      {info['preset']}")
    print(f"rank        {info['rank']}")
    print(f"layers      {info['layers']}")
    print(f"parameters  {info['parameters']:,}")
    print(f"angles      mean |theta| {info['angle_mean_abs_deg']:.4f} deg, max |theta| {info['angle_max_abs_deg']:.4f} deg")
    print("most rotated layers (mean |theta|, max |theta| in degrees):")
    for row in info["most_rotated_layers"]:
        print(f"  {row['key']}: {row['mean_abs_deg']:.4f}, {row['max_abs_deg']:.4f}")
    return 0
