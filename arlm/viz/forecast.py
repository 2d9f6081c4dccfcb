"""Forecast plots: each model's median and 10-90% band after the series' recent history (matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arlm.viz import pyplot, save_png


def plot_forecasts(values: np.ndarray, origin: int, forecasts: dict, png_path: str | Path, title: str = "",
                   verb: str = "ts forecast") -> Path:
    """``forecasts``: model -> object with ``mean`` and ``quantiles`` (0.1 .. 0.9) starting at ``origin``;
    ``verb``: the command the PNG is marked as made by."""
    plt = pyplot()
    h = len(next(iter(forecasts.values())).mean)
    start = max(0, origin - 4 * h)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    ax.plot(np.arange(start, min(len(values), origin + h)), values[start:origin + h], color="black", linewidth=1,
            label="series")
    t = np.arange(origin, origin + h)
    for i, (name, f) in enumerate(forecasts.items()):
        color = f"C{i}"
        ax.plot(t, f.quantiles[4], color=color, linewidth=1.2, label=f"{name} median")
        ax.fill_between(t, f.quantiles[0], f.quantiles[-1], color=color, alpha=0.15)
    ax.axvline(origin, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(title + " (bands: 10-90%)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_png(fig, png_path, verb)
