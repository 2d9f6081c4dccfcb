"""``arlm ts fit|forecast|backtest``: classical forecasters and the backtest harness."""

from __future__ import annotations

import argparse

from arlm.cli.flags import (add_train_args, add_verb, emit_json, explicit_values, field_names, options, read_train_toml,
                            report_training, verb_group)
from arlm.config import SeriesConfig, SeriesPrepareConfig, TrainConfig, is_model_dir
from arlm.errors import UserError


def _config(args: argparse.Namespace) -> SeriesConfig:
    return options(SeriesConfig, args, "ts options")


def _neural(cfg: SeriesConfig) -> dict:
    """The neural forecasters among --model, loaded (a folder that is not one fails here, before any work)."""
    from arlm.api import load
    from arlm.timeseries.neural import NeuralForecaster

    return {m: NeuralForecaster.of(load(m, device=cfg.device), cfg.samples, cfg.temperature, cfg.seed)
            for m in cfg.model if is_model_dir(m)}


def cmd_prepare(args: argparse.Namespace) -> int:
    from arlm.timeseries.neural import prepare_series

    meta = prepare_series(options(SeriesPrepareConfig, args, "ts prepare options"))
    if args.json:
        emit_json(meta)
        return 0
    R = meta["record_tokens"]
    print(f"{meta['documents']:,} series -> {meta['train_tokens'] // R:,} training and {meta['val_tokens'] // R:,} "
          f"validation records of {R} tokens (context {meta['context_length']}, prediction {meta['prediction_length']}) "
          f"-> {args.out}")
    if meta["val_series"]:
        names = meta["val_series"]
        print(f"real series held out whole for validation ({len(names)}): {', '.join(names[:12])}"
              f"{', ...' if len(names) > 12 else ''} (meta.json val_series)")
    print(f"next: arlm ts train --data {args.out} --out DIR")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """`arlm train` on series records: the block is one record unless --block-size says otherwise."""
    from arlm.data.loader import TokenData
    from arlm.train.loop import train

    config = read_train_toml(args)
    overrides = explicit_values(args, field_names(TrainConfig))
    data = overrides.get("data", config.get("data"))
    if data and not overrides.get("resume"):
        meta = TokenData.open(data).meta
        if meta.modality != "series":
            raise UserError(f"{data} holds {meta.modality} data; `arlm ts train` trains forecasters on folders from "
                            f"`arlm ts prepare` (use `arlm train` for other data)")
        model = {**config.get("model", {}), **overrides.get("model", {})}
        if "block_size" not in model and not overrides.get("init_from", config.get("init_from")):
            overrides["model"] = {**overrides.get("model", {}), "block_size": meta.record_tokens}
    return report_training(args, train(config, **overrides))


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
        if lb["p_value"] is None:
            test = "Ljung-Box undefined (the residuals are constant: the model fits the series exactly)"
        else:
            test = (f"Ljung-Box Q({lb['lags']}) = {lb['statistic']:.2f}, p = {lb['p_value']:.3g}" +
                    (" (residuals look like white noise)" if lb["p_value"] > 0.05 else " (residuals still correlated)"))
        print(f"  {m}: {chosen}; {test}")
    return 0


def cmd_forecast(args: argparse.Namespace) -> int:
    from arlm.timeseries.commands import run_forecast

    cfg = _config(args)
    r = run_forecast(cfg, _neural)
    if args.json:
        emit_json(r)
        return 0
    for m, f in r["forecasts"].items():
        steps = ", ".join(f"{v:.4g} [{lo:.4g}, {hi:.4g}]" for v, lo, hi in zip(f["mean"], f["q0.1"], f["q0.9"]))
        print(f"{r['series']} {m}, next {r['horizon']} ({f['point']} [10%, 90%]): {steps}")
    if r["out"]:
        print(f"-> {r['out']} and its .png")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from arlm.timeseries.commands import run_backtest

    cfg = _config(args)
    report, text = run_backtest(cfg, _neural)
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
    verbs = verb_group(sub, "ts", "time series: classical forecasters, a neural forecaster on the GPT, and backtests",
                       "AR(p) with the order chosen by AIC/BIC, ARIMA, seasonal naive and ETS (statsmodels, "
                       "statsforecast) and a neural forecaster (arlm's GPT on Chronos-tokenised series) on a CSV column "
                       "or a bundled real series; forecasts with 10-90% intervals; rolling-origin backtests scored with "
                       "MASE and weighted quantile loss.")
    add_verb(verbs, "prepare", cmd_prepare, "synthetic and real series -> training records for a neural forecaster",
             SeriesPrepareConfig)
    add_train_args(add_verb(verbs, "train", cmd_train, "train (or, with --init-from, fine-tune) a neural forecaster",
                            json=False, description="`arlm train` on records from `arlm ts prepare`: the same loop, "
                                                    "flags and outputs; the context window defaults to one record."))
    add_verb(verbs, "fit", cmd_fit, "fit models to the whole series: chosen orders, Ljung-Box on residuals", SeriesConfig)
    add_verb(verbs, "forecast", cmd_forecast, "forecast past the end of the series, with intervals", SeriesConfig)
    add_verb(verbs, "backtest", cmd_backtest, "every model on the same held-out windows: MASE and WQL", SeriesConfig)
