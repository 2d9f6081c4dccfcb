"""What a classical fit costs, bounded before it starts: orders the series can identify, and the seconds each
library would take, from cost models measured on a 2-core AMD EPYC (arlm's reference machine; another CPU
changes the constants, not the shapes).

| model | cost, seconds | measured |
|---|---|---|
| AR(p) selection (statsmodels ``ar_select_order``, max lag L) | 1.15e-7 n L^2 | 20,000 values, L 104: 24.8 s |
| ARIMA(p,d,q) (statsmodels, Kalman filter of a state of m = max(p, q+1)) | 5e-5 n m^2 | ARIMA(20,0,20), 300 values: 7 s |
| AutoARIMA (statsforecast, seasonal period s <= 24) | 5e-5 n (s+5)^2 | s 1: 20,000 values 35.6 s; s 12: 2,000 values 29.5 s; s 24: 500 values 26.5 s |
| AutoETS (statsforecast) | 1.2e-5 n max(s, 5) | s 52: 20,000 values 12.8 s |

AutoARIMA with a seasonal period past 24 grows faster than the model (period 52: 500 values took more
than 5 minutes), so it is refused there: Hyndman and Athanasopoulos (FPP3, section 12.1) advise Fourier
terms or ETS for long seasonal periods too.
"""

from __future__ import annotations

from arlm.errors import UserError

MAX_FIT_SECONDS = 120.0  # one model on one series: fit, forecast
MAX_BACKTEST_SECONDS = 1800.0  # every model on every window of every series
MAX_AUTO_ARIMA_PERIOD = 24


def check_arima_order(order: tuple[int, int, int], n: int) -> None:
    """At most one parameter per 3 values after differencing (as AR's order is bounded by n / 3)."""
    p, d, q = order
    k = p + q + (d < 2)  # coefficients, and the constant or drift; the variance besides
    if 3 * k > n - d:
        raise UserError(f"ARIMA({p},{d},{q}) has {k + 1} parameters, too many for {n} values ({n - d} after "
                        f"differencing; at most one parameter per 3 values): lower p and q, or leave out --order for "
                        f"AutoARIMA")


def fit_seconds(model: str, n: int, period: int, max_lag: int, order: tuple[int, int, int] | None) -> float:
    """Estimated seconds of one fit of ``model`` on ``n`` values (the table above); 0 for seasonal naive."""
    if model == "ar":
        return 1.15e-7 * n * max_lag ** 2
    if model == "arima" and order is not None:
        return 5e-5 * n * max(order[0], order[2] + 1) ** 2
    if model == "arima":
        return 5e-5 * n * (period + 5) ** 2
    if model == "ets":
        return 1.2e-5 * n * max(period, 5)
    return 0.0


def check_fit(model: str, n: int, period: int, max_lag: int, order: tuple[int, int, int] | None) -> float:
    """Refuse a fit that the series cannot identify or that would take minutes; its estimated seconds."""
    if model == "arima" and order is not None:
        check_arima_order(order, n)
    if model == "arima" and order is None and period > MAX_AUTO_ARIMA_PERIOD:
        raise UserError(f"AutoARIMA with a seasonal period of {period} would take many minutes (its seasonal models "
                        f"hold a state of {period + 1}+ values); use --model ets or ar, or a fixed --order P,D,Q")
    seconds = fit_seconds(model, n, period, max_lag, order)
    if seconds > MAX_FIT_SECONDS:
        fix = {"ar": "lower --max-lag", "arima": "lower p and q" if order else "give a fixed --order P,D,Q",
               "ets": "use fewer values"}[model]
        raise UserError(f"{model} on {n:,} values would take about {seconds / 60:.0f} minutes; {fix}, or forecast from "
                        f"the recent part of the series (fewer CSV rows)")
    return seconds
