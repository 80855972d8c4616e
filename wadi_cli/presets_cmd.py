"""``wadi presets``: layers and exact parameter counts of every preset on the paper's models."""

from __future__ import annotations

from wadi_core.models.families import REFERENCE_ARCHITECTURES, build_on_meta
from wadi_core.lorad.presets import PRESETS, preset_parameter_count


def register(sub) -> None:
    p = sub.add_parser("presets", help="list LoRaD presets with layer and parameter counts (no weights needed)")
    p.set_defaults(run=run)


def preset_table() -> list[dict]:
    rows = []
    for family, (_, presets) in REFERENCE_ARCHITECTURES.items():
        model = build_on_meta(family)
        total = sum(p.numel() for p in model.parameters())
        for preset, ranks in presets.items():
            for rank in ranks:
                layers, params = preset_parameter_count(model, preset, rank)
                rows.append({"family": family, "preset": preset, "rank": rank, "layers": layers,
                             "parameters": params, "share": params / total})
    return rows


def run(args) -> int:
    for name, preset in PRESETS.items():
        print(f"{name:13s} (paper rank {preset.paper_rank:3d}): {preset.description}")
    print()
    print(f"{'family':13s} {'preset':13s} {'rank':>5s} {'layers':>7s} {'parameters':>13s} {'of model':>9s}")
    for row in preset_table():
        print(f"{row['family']:13s} {row['preset']:13s} {row['rank']:5d} {row['layers']:7d} "
              f"{row['parameters']:13,d} {100 * row['share']:8.2f}%")
    return 0
