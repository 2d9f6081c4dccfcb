"""Plots (matplotlib, headless): loss curves, attention maps, forecasts, waveforms. Every PNG is written
atomically and carries the verb that made it (the PNG ``Software`` text), so that the output guard
(arlm/io/outputs.py) can tell arlm's own plot, which a rerun may replace, from a user's image."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, verb: str) -> Path:
    """Write ``fig`` to ``path`` as a PNG marked as made by ``arlm VERB``, atomically; the figure is closed."""
    from arlm.io.atomic import atomic_file
    from arlm.io.outputs import software

    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": software(verb)})
    finally:
        pyplot().close(fig)
    return Path(path)
