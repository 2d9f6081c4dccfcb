"""Rolling-origin backtests: every model forecasts the same windows of each series' held-out tail.

With horizon h and W windows, the origins are n - W h, n - (W-1) h, ..., n - h: each model is fitted
on everything before an origin and forecasts the next h values, never seeing them. Per series and
model: MASE averaged over the windows (each scaled by its own history's seasonal naive error) and WQL
pooled over the windows; across series, the geometric mean of each model's score relative to
seasonal naive's (the Chronos paper's aggregate).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from arlm.data.series import Series
from arlm.errors import UserError
from arlm.eval.forecast import geometric_mean_relative, mase, wql_parts
from arlm.io.atomic import atomic_file
from arlm.timeseries.classical import QUANTILES, Forecast, forecast

log = logging.getLogger(__name__)

Forecaster = Callable[[str, np.ndarray, int, int], Forecast]
BASELINE = "seasonal-naive"
RESULTS = "results.csv"
RESULTS_HEADER = ("series", "model", "mase", "wql")  # also how arlm recognises its own results.csv


def origins(n: int, horizon: int, windows: int, min_history: int = 8) -> list[int]:
    starts = [n - k * horizon for k in range(windows, 0, -1)]
    if starts[0] < min_history:
        raise UserError(f"a series of {n} values cannot hold {windows} window(s) of {horizon} after a history of "
                        f"{min_history}; lower --horizon or --windows")
    return starts


def backtest_series(s: Series, models: list[str], horizon: int, windows: int, fc: Forecaster = None) -> dict:
    """{model: {"mase", "wql", "last": the last window's Forecast}} for one series."""
    fc = fc or (lambda m, y, h, p: forecast(m, y, h, p))
    out = {}
    for m in models:
        mases, loss, scale, last = [], 0.0, 0.0, None
        for o in origins(len(s.values), horizon, windows):
            f = fc(m, s.values[:o], horizon, s.period)
            actual = s.values[o:o + horizon]
            mases.append(mase(actual, f.mean, s.values[:o], s.period))
            lo, sc = wql_parts(actual, f.quantiles, QUANTILES)
            loss, scale, last = loss + lo, scale + sc, f
        out[m] = {"mase": float(np.mean(mases)), "wql": loss / scale if scale > 0 else float("nan"), "last": last}
        log.debug("%s %s: MASE %.3f WQL %.3f", s.name, m, out[m]["mase"], out[m]["wql"])
    return out


def backtest(series: list[Series], models: list[str], horizon: int, windows: int, fc: Forecaster = None) -> dict:
    """Every series x model, and the geometric means relative to seasonal naive (when it is among the models)."""
    results = {s.name: backtest_series(s, models, horizon, windows, fc) for s in series}
    summary = {}
    if BASELINE in models:
        for metric in ("mase", "wql"):
            summary[metric] = geometric_mean_relative({k: {m: r[m][metric] for m in r} for k, r in results.items()},
                                                      BASELINE)
    return {"results": results, "relative": summary, "horizon": horizon, "windows": windows}


def write_csv(report: dict, path: str | Path) -> Path:
    """One row per series and model (MASE, WQL), then the geometric-mean rows."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(RESULTS_HEADER)
            for name, row in report["results"].items():
                for m, r in row.items():
                    w.writerow([name, m, f"{r['mase']:.6g}", f"{r['wql']:.6g}"])
            rel = report["relative"]
            for m in rel.get("mase", {}):
                w.writerow([f"geometric mean relative to {BASELINE}", m, f"{rel['mase'][m]:.6g}", f"{rel['wql'][m]:.6g}"])
    return Path(path)


def table(report: dict) -> str:
    """The report as aligned text: a row per series, MASE and WQL per model; the relative geometric means."""
    models = list(next(iter(report["results"].values())))
    width = max(12, *(len(n) for n in report["results"]))
    head = f"{'series':<{width}}" + "".join(f"{m + ' MASE':>22}{'WQL':>8}" for m in models)
    lines = [head]
    for name, row in report["results"].items():
        lines.append(f"{name:<{width}}" + "".join(f"{row[m]['mase']:>22.3f}{row[m]['wql']:>8.3f}" for m in models))
    rel = report["relative"]
    if rel:
        lines.append(f"{'geo. mean / ' + BASELINE:<{width}}" + "".join(
            f"{rel['mase'][m]:>22.3f}{rel['wql'][m]:>8.3f}" for m in models))
    return "\n".join(lines)
