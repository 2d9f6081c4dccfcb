"""``arlm ts fit|forecast|backtest``: classical forecasters and the backtest harness."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_config_args, emit_json, json_flag, options, verb_group
from arlm.config import SeriesConfig


def _config(args: argparse.Namespace) -> SeriesConfig:
    return options(SeriesConfig, args, "ts options")


def cmd_fit(args: argparse.Namespace) -> int:
    from arlm.timeseries.commands import fit

    r = fit(_config(args))
    if args.json:
        emit_json(r)
        return 0
    print(f"{r['series']}: {r['values']} values, seasonal period {r['period']}")
    for m, info in r["models"].items():
        lb = info.pop("ljung_box")
        chosen = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        print(f"  {m}: {chosen}; Ljung-Box Q({lb['lags']}) = {lb['statistic']:.2f}, p = {lb['p_value']:.3g}"
              f"{' (residuals look like white noise)' if lb['p_value'] > 0.05 else ' (residuals still correlated)'}")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from arlm.timeseries.commands import run_forecast

    r = run_forecast(_config(args))
    if args.json:
        emit_json(r)
        return 0
    for m, f in r["forecasts"].items():
        steps = ", ".join(f"{v:.4g} [{lo:.4g}, {hi:.4g}]" for v, lo, hi in zip(f["mean"], f["q0.1"], f["q0.9"]))
        print(f"{r['series']} {m}, next {r['horizon']} (mean [10%, 90%]): {steps}")
    if r["out"]:
        print(f"-> {r['out']} and its .png")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from arlm.timeseries.commands import run_backtest

    cfg = _config(args)
    report, text = run_backtest(cfg)
    if args.json:
        emit_json({"results": {s: {m: {k: v for k, v in r.items() if k != "last"} for m, r in row.items()}
                               for s, row in report["results"].items()}, "relative": report["relative"],
                   "horizon": report["horizon"], "windows": report["windows"]})
        return 0
    print(f"rolling-origin backtest: {report['windows']} windows of {report['horizon']} steps per series")
    print(text)
    if cfg.out:
        print(f"-> {cfg.out}/results.csv and a PNG per series")
    return 0


def add_verbs(sub) -> None:
    verbs = verb_group(sub, "ts", "time series: classical forecasters (statsmodels, statsforecast) and backtests",
                       "AR(p) with the order chosen by AIC/BIC, ARIMA, seasonal naive and ETS on a CSV column or a "
                       "bundled real series; forecasts with 10-90% intervals; rolling-origin backtests scored with "
                       "MASE and weighted quantile loss.")
    for name, func, text in (("fit", cmd_fit, "fit models to the whole series: chosen orders, Ljung-Box on residuals"),
                             ("forecast", cmd_forecast, "forecast past the end of the series, with intervals"),
                             ("backtest", cmd_backtest, "every model on the same held-out windows: MASE and WQL")):
        sp = verbs.add_parser(name, help=text)
        add_config_args(sp, SeriesConfig)
        json_flag(sp)
        sp.set_defaults(func=func)
