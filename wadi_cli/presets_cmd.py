"""``wadi presets``: layers and exact parameter counts of every preset on the paper's models."""

from __future__ import annotations

from .commands import summary


def register(sub) -> None:
    p = sub.add_parser("presets", help=summary("presets"))
    p.set_defaults(run=run)


def run(args) -> int:
    from wadi_core.lorad.presets import PRESETS, preset_table

    for name, preset in PRESETS.items():
        print(f"{name:13s} (paper rank {preset.paper_rank:3d}): {preset.description}")
    print()
    print(f"{'family':13s} {'preset':13s} {'rank':>5s} {'layers':>7s} {'parameters':>13s} {'of model':>9s}")
    for row in preset_table():
        print(f"{row['family']:13s} {row['preset']:13s} {row['rank']:5d} {row['layers']:7d} "
              f"{row['parameters']:13,d} {100 * row['share']:8.2f}%")
    return 0
