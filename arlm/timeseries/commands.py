"""What ``arlm ts fit|forecast|backtest`` do, given a validated :class:`SeriesConfig`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np

from arlm.config import SeriesConfig, arima_order, is_model_dir
from arlm.data.series import DATASETS, Series, check_forecastable, load_dataset, read_csv_series
from arlm.errors import UserError
from arlm.io.atomic import atomic_file, atomic_dir
from arlm.io.outputs import CSV, PNG, Output, check_not_input, claim_dir, claim_file, safe_name
from arlm.timeseries.backtest import RESULTS, RESULTS_HEADER, backtest, origins, table, write_csv
from arlm.timeseries.classical import MODELS, QUANTILES, Forecast, ar_lags, forecast, ljung_box
from arlm.timeseries.cost import MAX_BACKTEST_SECONDS, check_fit
from arlm.viz.forecast import plot_forecasts


def series_of(cfg: SeriesConfig) -> list[Series]:
    """The series to forecast, each checked to be one a forecaster can fit."""
    if cfg.csv:
        series = [read_csv_series(cfg.csv, cfg.column, cfg.date_column, cfg.freq)]
    else:
        series = [load_dataset(n) for n in (list(DATASETS) if cfg.dataset == ["all"] else cfg.dataset)]
    for s in series:
        check_forecastable(s)
    return series


def check_work(cfg: SeriesConfig, models: list[str], series: list[Series], h: int, windows: int = 0) -> None:
    """Every classical fit to come, bounded before the first runs (arlm/timeseries/cost.py): each fit on its
    history, and a backtest's fits together."""
    order = arima_order(cfg.order) if cfg.order else None
    total, fits = 0.0, 0
    for s in series:
        for n in origins(len(s.values), h, windows) if windows else [len(s.values)]:
            for m in (m for m in models if m in MODELS):
                total += check_fit(m, n, s.period, ar_lags(cfg.max_lag, s.period, n), order)
                fits += 1
    if total > MAX_BACKTEST_SECONDS:
        raise UserError(f"the backtest's {fits:,} fits would take about {total / 60:.0f} minutes; lower --windows, or "
                        f"give fewer --model or --dataset")


def horizon_of(cfg: SeriesConfig, s: Series) -> int:
    return cfg.horizon or max(4, s.period)


Neural = dict  # {--model value: a NeuralForecaster} for the model folders among --model
LoadNeural = Callable[[SeriesConfig], Neural]  # loads them, once the series and outputs have been checked


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
    check_work(cfg, cfg.model or ["ar"], [s], 1)
    out = {"series": s.name, "values": len(s.values), "period": s.period, "models": {}}
    for m in cfg.model or ["ar"]:
        f = fit_one(cfg, m, s.values, 1, s.period)
        out["models"][m] = {**f.info, "residual_std": float(np.std(f.residuals)),
                            "ljung_box": ljung_box(f.residuals, scale=float(np.std(s.values)))}
    return out


FORECAST_HEADER = ["model", "step", "forecast", "point"] + [f"q{q:g}" for q in QUANTILES]


def forecast_outputs(cfg: SeriesConfig) -> Path | None:
    """--out of `ts forecast` (a CSV, and the PNG beside it), checked before any model is fitted."""
    if not cfg.out:
        return None
    if Path(cfg.out).suffix.lower() != ".csv":
        raise UserError(f"--out must name a .csv file (the forecast; its plot goes beside it as .png), got {cfg.out}")
    inputs = [("model folder", m) for m in cfg.model if is_model_dir(m)]
    png = Path(cfg.out).with_suffix(".png")
    return claim_file(cfg.out, "--out", Output(CSV, "ts forecast", ",".join(FORECAST_HEADER)), inputs=[("CSV", cfg.csv)],
                      input_folders=inputs, overwrite=cfg.overwrite, companions=[(png, Output(PNG, "ts forecast"))])


def run_forecast(cfg: SeriesConfig, load_neural: LoadNeural | None = None) -> dict:
    """Forecast past the end of the series with each model; optionally a CSV (and a PNG beside it)."""
    s = _one_series(cfg)
    h = horizon_of(cfg, s)
    check_work(cfg, cfg.model or ["ar"], [s], h)
    target = forecast_outputs(cfg)
    neural = load_neural(cfg) if load_neural else None
    _check_neural(neural, h)
    forecasts = {label(m): fit_one(cfg, m, s.values, h, s.period, neural) for m in cfg.model or ["ar"]}
    if target is not None:
        with atomic_file(target) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(FORECAST_HEADER)
                for m, fc in forecasts.items():
                    for t in range(h):
                        w.writerow([m, t + 1, f"{fc.mean[t]:.6g}", fc.point] + [f"{fc.quantiles[i, t]:.6g}" for i in range(len(QUANTILES))])
        plot_forecasts(s.values, len(s.values), forecasts, Path(cfg.out).with_suffix(".png"), s.name)
    return {"series": s.name, "horizon": h, "forecasts": {m: {"point": f.point, "mean": f.mean.tolist(),
                                                                "q0.1": f.quantiles[0].tolist(),
                                                                "q0.9": f.quantiles[-1].tolist()}
                                                            for m, f in forecasts.items()},
            "out": cfg.out or None}


def run_backtest(cfg: SeriesConfig, load_neural: LoadNeural | None = None) -> tuple[dict, str]:
    """Every model on every series' tail; the table, and results.csv + PNGs in --out."""
    series = series_of(cfg)
    names = {label(m): m for m in cfg.model or MODELS}
    if len(names) < len(cfg.model or MODELS):
        raise UserError("two --model values have the same name; give each model once (folders with different names)")
    models = list(names)
    out = None
    if cfg.out:
        out = claim_dir(cfg.out, "--out", "ts backtest", _backtest_file,
                        what=f"an earlier backtest's {RESULTS} and plots")
        check_not_input(out, "--out", cfg.out, [("CSV", cfg.csv)],
                        [("model folder", m) for m in cfg.model if is_model_dir(m)])
    horizons = {horizon_of(cfg, s) for s in series}
    if len(horizons) > 1:  # one horizon per report, so that the series' scores aggregate
        raise UserError(f"the series have different seasonal periods (default horizons {sorted(horizons)}); give --horizon")
    h = horizons.pop()
    check_work(cfg, [names[m] for m in models], series, h, cfg.windows)  # also: every series holds the windows
    neural = load_neural(cfg) if load_neural else None
    _check_neural(neural, h)
    report = backtest(series, models, h, cfg.windows, lambda m, y, hh, p: fit_one(cfg, names[m], y, hh, p, neural))
    if out is not None:
        with atomic_dir(out) as tmp:
            write_csv(report, tmp / "results.csv")
            for s in series:
                last = {m: report["results"][s.name][m]["last"] for m in models}
                plot_forecasts(s.values, len(s.values) - h, last, tmp / f"{safe_name(s.name)}.png", s.name,
                               "ts backtest")
    return report, table(report)


def _backtest_file(entry: Path) -> bool:
    """An earlier backtest's own file: its results.csv, or a plot it marked."""
    if entry.name == RESULTS:
        return Output(CSV, "ts backtest", ",".join(RESULTS_HEADER)).ours(entry)
    return entry.suffix == ".png" and Output(PNG, "ts backtest").ours(entry)
