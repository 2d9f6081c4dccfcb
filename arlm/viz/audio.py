"""Waveform and spectrogram of a sound, one above the other, as a PNG (matplotlib, headless)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from arlm.viz import pyplot, save_png


def waveform_and_spectrogram(wave: np.ndarray, rate: int, split_seconds: float, png_path: str | Path) -> Path:
    """``split_seconds``: where the given prompt ends and the generated part begins (a dashed line)."""
    plt = pyplot()
    t = np.arange(len(wave)) / rate
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), dpi=110, sharex=True)
    top.plot(t, wave, linewidth=0.4, color="#1f77b4")
    top.set_ylabel("amplitude")
    top.set_ylim(-1, 1)
    # silent stretches have zero power (drawn as the darkest colour); a sound shorter than one window is one column
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bottom.specgram(wave, NFFT=256, Fs=rate, noverlap=192, cmap="magma")
    bottom.set_ylabel("frequency (Hz)")
    bottom.set_xlabel("seconds")
    for ax in (top, bottom):
        ax.axvline(split_seconds, color="white" if ax is bottom else "black", linestyle="--", linewidth=1)
    top.set_title("given | generated", fontsize=9)
    fig.tight_layout()
    return save_png(fig, png_path, "audio generate")
