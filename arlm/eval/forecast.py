"""Forecast accuracy: MASE (Hyndman and Koehler 2006) and the weighted quantile loss (WQL) that the
Chronos paper (Ansari et al. 2024, section 5.4) reports, with its aggregate across series: the
geometric mean of each model's score relative to seasonal naive's on the same series."""

from __future__ import annotations

import numpy as np


def mase_scale(history: np.ndarray, period: int) -> float:
    """Mean absolute error of the seasonal naive forecast in sample: mean |y_t - y_{t-m}| over the history
    (m = 1 when the history is not longer than the period). Zero for a constant history."""
    m = period if len(history) > period else 1
    return float(np.mean(np.abs(history[m:] - history[:-m])))


def mase(actual: np.ndarray, predicted: np.ndarray, history: np.ndarray, period: int) -> float:
    """Mean absolute error of the forecast over the in-sample seasonal naive error (nan for a constant history)."""
    scale = mase_scale(history, period)
    err = float(np.mean(np.abs(np.asarray(actual) - np.asarray(predicted))))
    return err / scale if scale > 0 else (0.0 if err == 0 else float("nan"))


def pinball(actual: np.ndarray, predicted: np.ndarray, q: float) -> np.ndarray:
    """Quantile (pinball) loss of the q-quantile forecast, elementwise."""
    d = np.asarray(actual) - np.asarray(predicted)
    return np.maximum(q * d, (q - 1) * d)


def wql_parts(actual: np.ndarray, quantiles: np.ndarray, levels) -> tuple[float, float]:
    """(sum over quantile levels and steps of 2 x pinball loss / number of levels, sum |actual|): a series'
    WQL is their ratio, and sums over windows give the windows' pooled WQL."""
    loss = sum(2 * pinball(actual, quantiles[i], q).sum() for i, q in enumerate(levels)) / len(levels)
    return float(loss), float(np.abs(actual).sum())


def wql(actual: np.ndarray, quantiles: np.ndarray, levels) -> float:
    loss, scale = wql_parts(actual, quantiles, levels)
    return loss / scale if scale > 0 else float("nan")


def geometric_mean_relative(scores: dict[str, dict[str, float]], baseline: str) -> dict[str, float]:
    """scores[series][model] -> for each model, the geometric mean over series of score / baseline's score
    (series where either is missing, zero or not finite are left out)."""
    models = {m for row in scores.values() for m in row}
    out = {}
    for m in sorted(models):
        ratios = [row[m] / row[baseline] for row in scores.values()
                  if m in row and baseline in row and np.isfinite(row[m]) and np.isfinite(row[baseline])
                  and row[m] > 0 and row[baseline] > 0]
        out[m] = float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")
    return out
