"""Heatmaps for `arlm inspect`: attention maps with token labels, and the loss rise of each ablated head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arlm.viz import pyplot as _pyplot, save_png


def attention_grid(maps: np.ndarray, labels: list[str], path: str | Path, layers: list[int], heads: list[int]) -> None:
    """One heatmap per (layer, head) of ``maps`` (n_layer, n_head, T, T): rows read, columns are read; token
    labels on the axes when there are few enough to read."""
    plt = _pyplot()
    T = maps.shape[-1]
    cell = 2.2 if T <= 24 else 3.0
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(cell * len(heads) + 0.5, cell * len(layers) + 0.5),
                             dpi=110, squeeze=False)
    shown = [repr(t)[1:-1] for t in labels]  # newlines and spaces visible
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if T <= 40:
                ax.set_xticks(range(T), shown, rotation=90, fontsize=5)
                ax.set_yticks(range(T), shown, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    save_png(fig, path, "inspect attention")


def head_heatmap(rise: np.ndarray, base: float, path: str | Path) -> None:
    """The (n_layer, n_head) loss rises as a heatmap, each cell labelled."""
    plt = _pyplot()
    L, H = rise.shape
    fig, ax = plt.subplots(figsize=(1 + 0.7 * H, 1 + 0.5 * L), dpi=110)
    im = ax.imshow(rise, cmap="magma")
    for i in range(L):
        for j in range(H):
            ax.text(j, i, f"{rise[i, j]:+.3f}", ha="center", va="center", fontsize=6, color="white" if rise[i, j] <
                    rise.max() / 2 else "black")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_title(f"loss rise with the head ablated (base {base:.4f} nats/token)", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    save_png(fig, path, "inspect heads")
