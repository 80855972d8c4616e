"""Weight analysis (the paper's Fig. 1): how much a distilled model turned its teacher's weight rows against how
much it rescaled them, whether the turn is low-rank, and the swap ablation that samples each half alone.

``weights`` holds the definitions and the per-layer statistics, ``sources`` reads either side (models, single
files, adapter files applied to a base) one layer at a time, ``plots`` draws them, ``report.analyze`` writes it
all into a folder."""

from .report import Swap, analyze
from .weights import (DEFINITIONS, ENERGY, RANK_FRACTIONS, SWAPS, LayerStats, analyse, as_rows, energy_curve,
                      isotropic_ratio, layer_stats, model_state, random_energy_curve, residual, row_changes, summary,
                      swapped_weight)

__all__ = ["Swap", "analyze", "DEFINITIONS", "ENERGY", "RANK_FRACTIONS", "SWAPS", "LayerStats", "analyse", "as_rows",
           "energy_curve", "isotropic_ratio", "layer_stats", "model_state", "random_energy_curve", "residual",
           "row_changes", "summary", "swapped_weight"]
