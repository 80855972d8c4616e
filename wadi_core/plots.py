"""PNG plots people look at: training loss curves (matplotlib, headless)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from . import fileio


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no screen on training machines
    import matplotlib.pyplot as plt
    return plt


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def loss_curves(curves: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "training losses",
                xlabel: str = "step") -> None:
    """One panel per curve (they have different scales), raw values faint, a moving average bold."""
    plt = _pyplot()
    curves = {k: v for k, v in curves.items() if len(v)}
    fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(5 * max(1, len(curves)), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        window = max(1, len(values) // 25)
        ax.plot(np.arange(len(values)), values, alpha=0.3, linewidth=0.8)
        averaged = smooth(values, window)
        ax.plot(np.arange(len(averaged)) + (window - 1), averaged, linewidth=1.8,
                label=f"moving average ({window} steps)" if window > 1 else name)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, title)


def save_figure(fig, path: str | os.PathLike, title: str, rect=(0, 0, 1, 1)) -> None:
    """Title, tight layout (of the panels within ``rect``, a fraction of the figure: room for a figure legend),
    PNG at 100 dpi, and the figure closed (pyplot keeps figures otherwise)."""
    fig.suptitle(title)
    fig.tight_layout(rect=rect)
    try:
        with fileio.atomic_file(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        _pyplot().close(fig)
