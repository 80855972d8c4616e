"""PNG plots of ``wadi analyze``, written to be read without the paper at hand."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .weights import ENERGY, RANK_FRACTIONS, LayerStats, random_energy_curve
from ..plots import _pyplot, save_figure

NORM_COLOUR, DIRECTION_COLOUR = "#4c9bd6", "#e0533d"


def change_bars(layers: Sequence[LayerStats], path: str | os.PathLike, title: str) -> None:
    """Per layer, the mean change of row norm next to the mean change of row direction (log scale),
    and the paper's Fig. 1a view: each layer's mean against its standard deviation."""
    plt = _pyplot()
    fig, (bars, scatter) = plt.subplots(2, 1, figsize=(max(8.0, 0.09 * len(layers) + 3), 8.5),
                                        gridspec_kw={"height_ratios": [1.2, 1]})
    x = np.arange(len(layers))
    floor = 1e-12  # log axes cannot show 0: unchanged layers sit on the floor
    norm = np.maximum([layer.norm_mean for layer in layers], floor)
    direction = np.maximum([layer.direction_mean for layer in layers], floor)
    bars.bar(x - 0.2, norm, width=0.4, color=NORM_COLOUR, label="norm change (relative)")
    bars.bar(x + 0.2, direction, width=0.4, color=DIRECTION_COLOUR, label="direction change (angle, rad)")
    bars.set_yscale("log")
    bars.set_xlim(-1, len(layers))
    bars.set_xticks([])
    bars.set_xlabel(f"{len(layers)} layers, in model order (input blocks left, output blocks right)")
    bars.set_ylabel("mean over the layer's rows")
    bars.set_title("How much each layer's weight rows changed: length (norm) vs direction")
    bars.legend()
    bars.grid(alpha=0.3, axis="y")
    for values, colour, marker, label in (
            ([(layer.norm_mean, layer.norm_std) for layer in layers], NORM_COLOUR, "o", "norm"),
            ([(layer.direction_mean, layer.direction_std) for layer in layers], DIRECTION_COLOUR, "*", "direction")):
        arr = 100 * np.asarray(values)
        scatter.scatter(arr[:, 0], arr[:, 1], color=colour, marker=marker, alpha=0.45, s=30, label=f"{label} (a layer)")
        scatter.scatter(*arr.mean(0), color=colour, marker=marker, s=260, edgecolors="black",
                        label=f"{label} (mean of all layers)")
    scatter.set_xlabel("mean change over the layer's rows (%; direction: angle in rad x 100)")
    scatter.set_ylabel("standard deviation over rows (%)")
    scatter.set_title("Each layer as a point (the paper's Fig. 1a): further right = larger change")
    scatter.legend(fontsize=8)
    scatter.grid(alpha=0.3)
    save_figure(fig, path, title)


def energy_plot(layers: Sequence[LayerStats], path: str | os.PathLike, title: str) -> None:
    """Energy of the direction residual kept by its top singular values, against the share of rank."""
    plt = _pyplot()
    changed = [layer for layer in layers if layer.changed]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    fractions = [0.0, *RANK_FRACTIONS]
    for layer in changed:
        ax.plot(fractions, [0.0, *layer.energy_curve], color="gray", alpha=0.15, linewidth=0.8)
    if changed:
        mean = np.mean([layer.energy_curve for layer in changed], axis=0)
        ax.plot(fractions, [0.0, *mean], color=DIRECTION_COLOUR, linewidth=2.5,
                label=f"mean of {len(changed)} changed layers")
        shapes = {layer.shape for layer in changed}  # few distinct shapes, even in SD1.5
        random = {shape: random_energy_curve(shape) for shape in shapes}
        reference = np.mean([random[layer.shape] for layer in changed], axis=0)
        ax.plot(fractions, [0.0, *reference], color="black", linestyle="--", linewidth=1.2,
                label="random matrices of the same shapes (no structure)")
    ax.axhline(ENERGY, color="green", linestyle="--", label=f"{ENERGY:.0%} of the energy")
    ax.axvline(0.3, color="black", linestyle=":", label="30% of full rank")
    ax.set_xlabel("share of the residual's rank kept (top singular values)")
    ax.set_ylabel("share of the residual's energy kept")
    ax.set_title("Is the change of direction low-rank? (curves rising fast = yes)\n"
                 "residual = normalised rows of OTHER - normalised rows of BASE", fontsize=10)
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path, title)


def swap_chart(rows: Sequence[dict], path: str | os.PathLike, title: str) -> None:
    """One bar group per metric, one bar per model of the swap ablation."""
    plt = _pyplot()
    metrics = [m for m in ("fid", "clip_score") if all(m in r for r in rows)]
    accuracy = [k for k in ("single/color", "single/shape", "relation/relation")
                if all(k in r.get("prompt_accuracy", {}) for r in rows)]
    panels = metrics + (["accuracy"] if accuracy else [])
    if not panels:
        panels = ["none"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    colours = ["#555555", "#4c9bd6", "#e0533d", "#bbbbbb"]
    for ax, panel in zip(axes[0], panels):
        if panel == "accuracy":
            width = 0.8 / len(rows)
            for i, row in enumerate(rows):
                values = [row["prompt_accuracy"][k] for k in accuracy]
                ax.bar(np.arange(len(accuracy)) + i * width, values, width, color=colours[i % 4], label=row["label"])
            ax.set_xticks(np.arange(len(accuracy)) + 0.4 - width / 2, accuracy)
            ax.set_ylim(0, 1)
            ax.set_title("prompt accuracy (higher is better)")
            ax.legend(fontsize=8)
        elif panel == "none":
            ax.text(0.5, 0.5, "no metric available:\ngive --fid-features/--reference or --clip",
                    ha="center", va="center")
            ax.set_axis_off()
        else:
            ax.bar(range(len(rows)), [r[panel] for r in rows], color=colours[: len(rows)])
            ax.set_xticks(range(len(rows)), [r["label"].replace(" + ", "\n+ ") for r in rows], fontsize=8)
            ax.set_title(f"{panel.upper().replace('_', ' ')} ({'lower' if panel == 'fid' else 'higher'} is better)")
        ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path, title)
