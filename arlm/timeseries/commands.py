"""What ``arlm ts fit|forecast|backtest`` do, given a validated :class:`SeriesConfig`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from arlm.config import SeriesConfig, arima_order, is_model_dir
from arlm.data.series import DATASETS, Series, load_dataset, read_csv_series
from arlm.errors import UserError
from arlm.io.atomic import atomic_file, atomic_dir
from arlm.io.paths import output_dir, output_file
from arlm.timeseries.backtest import backtest, origins, table, write_csv
from arlm.timeseries.classical import MODELS, QUANTILES, Forecast, forecast, ljung_box
from arlm.viz.forecast import plot_forecasts


def series_of(cfg: SeriesConfig) -> list[Series]:
    if cfg.csv:
        return [read_csv_series(cfg.csv, cfg.column, cfg.date_column, cfg.freq)]
    names = list(DATASETS) if cfg.dataset == ["all"] else cfg.dataset
    return [load_dataset(n) for n in names]


def horizon_of(cfg: SeriesConfig, s: Series) -> int:
    return cfg.horizon or max(4, s.period)


Neural = dict  # {--model value: a NeuralForecaster} for the model folders among --model


def label(model: str) -> str:
    """A model's name in tables, CSV rows and plots: a classical model's name, a folder's last part."""
    return Path(model).name if is_model_dir(model) else model


def fit_one(cfg: SeriesConfig, model: str, y: np.ndarray, h: int, period: int, neural: Neural | None = None) -> Forecast:
    if neural and model in neural:
        return neural[model](y, h, period)
    return forecast(model, y, h, period, ic=cfg.ic, max_lag=cfg.max_lag,
                    order=arima_order(cfg.order) if cfg.order else None)


def _one_series(cfg: SeriesConfig) -> Series:
    series = series_of(cfg)
    if len(series) != 1:
        raise UserError("fit and forecast take one series: give one --dataset (or --csv)")
    return series[0]


def _check_neural(neural: Neural | None, h: int) -> None:
    for m, fc in (neural or {}).items():
        if h > fc.max_horizon():
            raise UserError(f"--horizon {h} is beyond what {m} can forecast ({fc.max_horizon()} steps: its context window "
                            f"holds {fc.block_size} tokens); lower --horizon")


def fit(cfg: SeriesConfig) -> dict:
    """Fit each model on the whole series: what it chose, and the Ljung-Box test of its residuals."""
    for m in cfg.model:
        if is_model_dir(m):
            raise UserError(f"fit reports the orders a classical model chooses; {m} is a neural forecaster: use "
                            f"`arlm ts forecast` or `arlm ts backtest` with it")
    s = _one_series(cfg)
    out = {"series": s.name, "values": len(s.values), "period": s.period, "models": {}}
    for m in cfg.model or ["ar"]:
        f = fit_one(cfg, m, s.values, 1, s.period)
        out["models"][m] = {**f.info, "residual_std": float(np.std(f.residuals)), "ljung_box": ljung_box(f.residuals)}
    return out


def run_forecast(cfg: SeriesConfig, neural: Neural | None = None) -> dict:
    """Forecast past the end of the series with each model; optionally a CSV (and a PNG beside it)."""
    s = _one_series(cfg)
    h = horizon_of(cfg, s)
    _check_neural(neural, h)
    target = output_file(cfg.out, "--out", inputs=[("CSV", cfg.csv)]) if cfg.out else None
    forecasts = {label(m): fit_one(cfg, m, s.values, h, s.period, neural) for m in cfg.model or ["ar"]}
    if target is not None:
        with atomic_file(target) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["model", "step", "forecast", "point"] + [f"q{q:g}" for q in QUANTILES])
                for m, fc in forecasts.items():
                    for t in range(h):
                        w.writerow([m, t + 1, f"{fc.mean[t]:.6g}", fc.point] + [f"{fc.quantiles[i, t]:.6g}" for i in range(len(QUANTILES))])
        plot_forecasts(s.values, len(s.values), forecasts, Path(target).with_suffix(".png"), s.name)
    return {"series": s.name, "horizon": h, "forecasts": {m: {"point": f.point, "mean": f.mean.tolist(),
                                                                "q0.1": f.quantiles[0].tolist(),
                                                                "q0.9": f.quantiles[-1].tolist()}
                                                            for m, f in forecasts.items()},
            "out": cfg.out or None}


def run_backtest(cfg: SeriesConfig, neural: Neural | None = None) -> tuple[dict, str]:
    """Every model on every series' tail; the table, and results.csv + PNGs in --out."""
    series = series_of(cfg)
    names = {label(m): m for m in cfg.model or MODELS}
    if len(names) < len(cfg.model or MODELS):
        raise UserError("two --model values have the same name; give each model once (folders with different names)")
    models = list(names)
    out = output_dir(cfg.out, "--out", replace_whole=True) if cfg.out else None
    if out is not None and out.exists() and any(p.name != "results.csv" and p.suffix != ".png" for p in out.iterdir()):
        raise UserError(f"--out {cfg.out} holds files a backtest did not write; give a new or empty folder")
    horizons = {horizon_of(cfg, s) for s in series}
    if len(horizons) > 1:  # one horizon per report, so that the series' scores aggregate
        raise UserError(f"the series have different seasonal periods (default horizons {sorted(horizons)}); give --horizon")
    h = horizons.pop()
    _check_neural(neural, h)
    for s in series:
        origins(len(s.values), h, cfg.windows)  # every series can hold the windows, before any work
    report = backtest(series, models, h, cfg.windows, lambda m, y, hh, p: fit_one(cfg, names[m], y, hh, p, neural))
    if out is not None:
        with atomic_dir(out) as tmp:
            write_csv(report, tmp / "results.csv")
            for s in series:
                last = {m: report["results"][s.name][m]["last"] for m in models}
                plot_forecasts(s.values, len(s.values) - h, last, tmp / f"{s.name}.png", s.name)
    return report, table(report)
