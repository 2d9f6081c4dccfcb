"""Classical forecasters through the libraries that own them: AR(p) with its order chosen by AIC or BIC
and ARIMA(p,d,q) with a given order (statsmodels), seasonal naive, ETS and automatic ARIMA
(statsforecast). Each returns the mean forecast and the quantiles 0.1 .. 0.9 of its predictive
distribution (Gaussian from the model's forecast variance: symmetric, so the 0.5 quantile is the mean),
and the in-sample residuals for diagnostics (Ljung-Box, statsmodels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from arlm.config import CLASSICAL_FORECASTERS
from arlm.errors import UserError
from arlm.timeseries.cost import check_fit

QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MODELS = CLASSICAL_FORECASTERS


@dataclass
class Forecast:
    model: str
    mean: np.ndarray  # (h,)
    quantiles: np.ndarray  # (len(QUANTILES), h)
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))  # in-sample one-step errors
    info: dict = field(default_factory=dict)  # what was chosen (order, information criterion)
    point: str = "mean"  # what ``mean`` holds: the mean, or (sampled paths) their median


def _gaussian(mean: np.ndarray, se: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return np.stack([mean + norm.ppf(q) * se for q in QUANTILES])


def _from_levels(out: dict, h: int) -> np.ndarray:
    """statsforecast's central intervals (levels 20..80) as the quantiles 0.1..0.9."""
    qs = []
    for q in QUANTILES:
        if q == 0.5:
            qs.append(out["mean"])
        else:
            level = int(round(abs(1 - 2 * q) * 100))
            qs.append(out[f"lo-{level}"] if q < 0.5 else out[f"hi-{level}"])
    return np.stack([np.asarray(x, dtype=np.float64)[:h] for x in qs])


def _statsforecast(name: str, y: np.ndarray, h: int, period: int) -> Forecast:
    from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

    m = max(1, period)
    if name == "seasonal-naive" and len(y) < m:
        m = 1
    model = {"seasonal-naive": lambda: SeasonalNaive(season_length=m), "ets": lambda: AutoETS(season_length=m),
             "arima": lambda: AutoARIMA(season_length=m)}[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(y)
            out = model.predict(h=h, level=[20, 40, 60, 80])
            fitted = np.asarray(model.predict_in_sample()["fitted"], dtype=np.float64)
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as e:  # statsforecast's "no suitable model"
            raise UserError(f"{name} could not be fitted to this series (statsforecast: {_first_line(e)}); try another "
                            f"--model" + (" or a fixed --order P,D,Q" if name == "arima" else "")) from None
    residuals = (y - fitted)[np.isfinite(fitted)]
    return Forecast(name, np.asarray(out["mean"], dtype=np.float64), _from_levels(out, h), residuals,
                    {"season_length": m, **_chosen(model)})


def _chosen(model) -> dict:
    """What statsforecast's automatic models chose: ARIMA(p,d,q)(P,D,Q)[m], or the ETS components."""
    fitted = getattr(model, "model_", None)
    if not isinstance(fitted, dict):
        return {}
    if fitted.get("arma") is not None:
        p, q, P, Q, m, d, D = (int(v) for v in fitted["arma"])
        return {"chosen": f"ARIMA({p},{d},{q})" + (f"({P},{D},{Q})[{m}]" if m > 1 else "")}
    if fitted.get("method"):
        return {"chosen": str(fitted["method"])}
    return {}


def ar_lags(max_lag: int, period: int, n: int) -> int:
    """The largest AR order tried: ``max_lag`` (0: twice the period, at least 8), at most n / 3."""
    return max(1, min(max_lag or max(8, 2 * period), n // 3))


def _ar(y: np.ndarray, h: int, ic: str, max_lag: int) -> Forecast:
    from statsmodels.tsa.ar_model import ar_select_order

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = ar_select_order(y, maxlag=max_lag, ic=ic, trend="c")
        res = sel.model.fit()
        pred = res.get_prediction(start=len(y), end=len(y) + h - 1)
    lags = list(sel.ar_lags or [])
    mean = np.asarray(pred.predicted_mean, dtype=np.float64)
    se = np.sqrt(np.asarray(pred.var_pred_mean, dtype=np.float64))
    return Forecast("ar", mean, _gaussian(mean, se), np.asarray(res.resid, dtype=np.float64),
                    {"p": max(lags) if lags else 0, "ic": ic, ic: float(getattr(res, ic))})


def _arima(y: np.ndarray, h: int, order: tuple[int, int, int]) -> Forecast:
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = ARIMA(y, order=order, trend=_arima_trend(order[1])).fit()
            fc = res.get_forecast(h)
        except (ValueError, np.linalg.LinAlgError) as e:
            raise UserError(f"ARIMA{order} could not be fitted to this series (statsmodels: {_first_line(e)}); lower "
                            f"p and q, or leave out --order for AutoARIMA") from None
    mean = np.asarray(fc.predicted_mean, dtype=np.float64)
    se = np.asarray(fc.se_mean, dtype=np.float64)
    return Forecast("arima", mean, _gaussian(mean, se), np.asarray(res.resid, dtype=np.float64)[order[1]:],
                    {"order": list(order), "aic": float(res.aic)})


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _arima_trend(d: int) -> str:
    """statsmodels' trend for ARIMA(p,d,q): a constant, a drift after one difference, none after two."""
    return "t" if d == 1 else ("n" if d > 1 else "c")


def forecast(model: str, y: np.ndarray, h: int, period: int = 1, *, ic: str = "aic", max_lag: int = 0,
             order: tuple[int, int, int] | None = None) -> Forecast:
    """``model`` fitted on ``y``, forecasting ``h`` steps. ``period``: the seasonal period; AR's order up
    to ``max_lag`` (0: twice the period, at least 8) chosen by ``ic``; ARIMA with ``order`` (p, d, q), or
    chosen automatically by statsforecast's AutoARIMA when None."""
    y = np.asarray(y, dtype=np.float64)
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)} (or a neural forecaster's folder)")
    if len(y) < 8:
        raise UserError(f"the series has {len(y)} values; a forecaster needs at least 8 to fit")
    check_fit(model, len(y), period, ar_lags(max_lag, period, len(y)), order)  # before the work, not after minutes
    if model == "ar":
        return _ar(y, h, ic, ar_lags(max_lag, period, len(y)))
    if model == "arima" and order is not None:
        return _arima(y, h, order)
    return _statsforecast(model, y, h, period)


def ljung_box(residuals: np.ndarray, lags: int = 0, scale: float = 0.0) -> dict:
    """Ljung-Box test that the residuals are white noise (statsmodels): statistic and p-value at ``lags``
    (default: min(10, n / 5)). Both are None when the residuals are constant to rounding (their spread below 1e-9 of the
    series' ``scale``, its standard deviation): the model fits exactly and their autocorrelation is noise."""
    from statsmodels.stats.diagnostic import acorr_ljungbox

    r = np.asarray(residuals, dtype=np.float64)
    lags = lags or max(1, min(10, len(r) // 5))
    if len(r) <= lags or not np.std(r) > 1e-9 * scale:
        return {"lags": lags, "statistic": None, "p_value": None}
    table = acorr_ljungbox(r, lags=[lags])
    return {"lags": lags, "statistic": float(table["lb_stat"].iloc[0]), "p_value": float(table["lb_pvalue"].iloc[0])}
