"""Time series in: one numeric column of a CSV file (pandas), or a real series that ships inside
statsmodels, offline. A series is regular and complete: a gap (an empty cell, a skipped date) is
refused with its position, never filled silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from arlm.errors import UserError

# Seasonal period of a pandas frequency (its leading letters): what seasonal naive repeats and what
# ETS and MASE's seasonal differences use.
PERIODS = {"A": 1, "Y": 1, "AS": 1, "YS": 1, "Q": 4, "QS": 4, "M": 12, "MS": 12, "W": 52, "D": 7, "B": 5, "H": 24,
           "h": 24, "T": 60, "min": 60}


MAX_CSV_BYTES = 1 << 30  # pandas holds several times a CSV's size while it parses it


@dataclass
class Series:
    name: str
    values: np.ndarray  # float64, no missing values
    freq: str = ""  # pandas frequency ("" when unknown)
    period: int = 1  # seasonal period (1: not seasonal)
    start: str = ""  # the first date, when known

    def __post_init__(self):
        assert self.values.ndim == 1 and np.isfinite(self.values).all()


def period_of(freq: str) -> int:
    base = "".join(c for c in freq.split("-")[0] if c.isalpha())
    return PERIODS.get(base, PERIODS.get(base.upper(), 1))


def read_csv_series(path: str | Path, column: str, date_column: str = "", freq: str = "") -> Series:
    """Column ``column`` of a CSV file, in file order (or by ``date_column``, checked for a regular
    ``freq``, inferred from the dates when not given)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--csv {path}: no such file" if not p.exists() else f"--csv {path} is not a file")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise UserError(f"--csv {path} is {p.stat().st_size / 2**30:.1f} GiB, more than the {MAX_CSV_BYTES >> 30} GiB "
                        f"arlm reads as a series; keep the rows and columns you need")
    if freq:
        check_freq(freq)
    try:
        frame = pd.read_csv(p)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UserError(f"{path} is not a CSV file pandas can read ({str(e).splitlines()[0][:120]})") from None
    for name, flag in ((column, "--column"), (date_column, "--date-column")):
        if name and name not in frame.columns:
            raise UserError(f"{path} has no column {name!r} ({flag}); its columns: {', '.join(map(str, frame.columns))}")
    if not column:
        raise UserError(f"name the series with --column; {path} has: {', '.join(map(str, frame.columns))}")
    values = _numeric(frame[column], path, column)
    start = ""
    if date_column:
        with warnings.catch_warnings():  # pandas warns when it guesses each date's format; a non-date is named below
            warnings.simplefilter("ignore", UserWarning)
            dates = pd.to_datetime(frame[date_column], errors="coerce")
        if dates.isna().any():
            row = int(np.flatnonzero(dates.isna().to_numpy())[0])
            raise UserError(f"{path} row {row + 2}: {frame[date_column].iloc[row]!r} in {date_column!r} is not a date")
        order = np.argsort(dates.to_numpy(), kind="stable")
        dates, values = dates.iloc[order].reset_index(drop=True), values[order]
        freq = freq or _infer_freq(dates, path)
        _check_regular(dates, freq, path)
        start = str(dates.iloc[0].date())
    return Series(column, values, freq, period_of(freq) if freq else 1, start)


def check_freq(freq: str) -> None:
    from pandas.tseries.frequencies import to_offset

    try:
        to_offset(freq)
    except ValueError:
        raise UserError(f"--freq {freq!r} is not a pandas frequency (e.g. D, W, MS, QS, YS)") from None


def _numeric(col, path, column: str) -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(col, errors="coerce")
    bad = numbers.isna() & col.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserError(f"{path} row {row + 2}: {col.iloc[row]!r} in column {column!r} is not a number")
    if numbers.isna().any():
        rows = np.flatnonzero(numbers.isna().to_numpy())
        raise UserError(f"{path}: column {column!r} has {len(rows)} empty cell(s), the first at row {rows[0] + 2}; "
                        f"fill or remove them (arlm does not fill gaps silently)")
    v = numbers.to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        raise UserError(f"{path}: column {column!r} holds infinite values")
    check_scale(v, f"{path}: column {column!r}")
    return v


# Values a forecaster can fit: squares and sums of squares (variances, likelihoods) stay finite and
# non-zero in float64 (whose range is 1e-308..1e308) with room for a series of a billion values.
MAX_SCALE, MIN_SCALE = 1e100, 1e-100


def check_scale(values: np.ndarray, where: str) -> None:
    """Refuse values whose magnitude float64 arithmetic on them cannot hold (statsforecast fails on 1e200,
    a Chronos-scaled series near 1e307 overflows its own mean)."""
    top = float(np.max(np.abs(values))) if len(values) else 0.0
    if top > MAX_SCALE:
        raise UserError(f"{where} holds values up to {top:.3g}, beyond what the forecasters can fit (their squares "
                        f"overflow); rescale the column (e.g. divide it by 1e{int(np.log10(top)) - 2})")
    if 0 < top < MIN_SCALE:
        raise UserError(f"{where} holds only values below {MIN_SCALE:g} in magnitude (at most {top:.3g}), too small for "
                        f"the forecasters (their squares underflow to zero); rescale the column")


def check_forecastable(s: Series) -> None:
    """A series a forecaster can be fitted to: not constant (every model's residuals would be zero and its
    statistics undefined; the forecast of a constant is that constant)."""
    if len(s.values) and np.ptp(s.values) == 0:
        raise UserError(f"the series {s.name} is constant (all {len(s.values)} values are {s.values[0]:g}): there is "
                        f"nothing to fit, and its forecast is that value")


def _infer_freq(dates, path) -> str:
    import pandas as pd

    if len(dates) < 3:
        raise UserError(f"{path}: too few dates to tell their frequency; give --freq")
    freq = pd.infer_freq(pd.DatetimeIndex(dates))
    if freq is None:
        raise UserError(f"{path}: the dates are not evenly spaced (a gap or a duplicate); fill the gaps, or give --freq "
                        f"to be told where they are")
    return freq


def _check_regular(dates, freq: str, path) -> None:
    import pandas as pd

    expected = pd.date_range(dates.iloc[0], periods=len(dates), freq=freq)
    differ = np.flatnonzero(expected.to_numpy() != dates.to_numpy())
    if len(differ):
        i = int(differ[0])
        raise UserError(f"{path}: the dates skip or repeat at {dates.iloc[i].date()} (expected {expected[i].date()} "
                        f"with frequency {freq}); fill the gap")


def _sm(name: str):
    import importlib

    return importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data


def _co2() -> Series:
    frame = _sm("co2")  # weekly Mauna Loa readings with gaps: monthly means have none from 1958-04 on
    monthly = frame["co2"].resample("MS").mean()
    return Series("co2", monthly.dropna().to_numpy(dtype=np.float64), "MS", 12, str(monthly.dropna().index[0].date()))


def _elnino() -> Series:
    frame = _sm("elnino")
    values = frame.drop(columns="YEAR").to_numpy(dtype=np.float64).reshape(-1)  # year by year, January to December
    return Series("elnino", values, "MS", 12, f"{int(frame['YEAR'].iloc[0])}-01-01")


def _column(dataset: str, column: str, freq: str, start: str, name: str = "") -> Callable[[], Series]:
    return lambda: Series(name or f"{dataset}-{column}", _sm(dataset)[column].to_numpy(dtype=np.float64), freq,
                          period_of(freq), start)


# The real series that ship inside statsmodels (no download), by name.
DATASETS: dict[str, Callable[[], Series]] = {
    "sunspots": _column("sunspots", "SUNACTIVITY", "YS", "1700-01-01", "sunspots"),
    "nile": _column("nile", "volume", "YS", "1871-01-01", "nile"),
    "co2": _co2,
    "elnino": _elnino,
    "elec_equip": lambda: Series("elec_equip", _sm("elec_equip").iloc[:, 0].to_numpy(np.float64), "MS", 12,
                                 "1995-01-01"),
    **{f"macro-{c}": _column("macrodata", c, "QS", "1959-01-01")
       for c in ("realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "tbilrate", "unemp", "pop",
                 "infl", "realint")},
    "interest-R": _column("interest_inflation", "R", "QS", "1972-01-01"),
    "interest-Dp": _column("interest_inflation", "Dp", "QS", "1972-01-01"),
}


def load_dataset(name: str) -> Series:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; the bundled series: {', '.join(DATASETS)}")
    series = DATASETS[name]()
    series.name = name  # the name it is asked for by, in tables and file names
    return series


# Real series kept for *training* a neural forecaster: none of them is among DATASETS (the series the
# backtests score), so a forecaster trained on these meets DATASETS zero-shot.
def _fertility() -> list[Series]:
    frame = _sm("fertility")  # births per woman, 1960-2015, one row per country (World Bank)
    years = [c for c in frame.columns if c.isdigit()]
    out = []
    for _, row in frame.iterrows():
        v = row[years].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]  # a few countries start late or stop early (their gaps are at the ends)
        if len(v) >= 24:
            out.append(Series(f"fertility-{row['Country Code']}", v, "YS", 1, "1960-01-01"))
    return out


def _danish() -> list[Series]:
    frame = _sm("danish_data")  # Danish money demand, 1974-1987
    return [Series(f"danish-{c}", frame[c].to_numpy(dtype=np.float64), "QS", 4, "1974-01-01") for c in frame.columns]


def _air_passengers() -> list[Series]:
    from statsforecast.utils import AirPassengers  # the Box-Jenkins airline series, 1949-1960

    return [Series("air-passengers", np.asarray(AirPassengers, dtype=np.float64), "MS", 12, "1949-01-01")]


TRAINING_SETS: dict[str, Callable[[], list[Series]]] = {
    "fertility": _fertility, "danish": _danish, "air-passengers": _air_passengers,
}


def load_series(names: list[str]) -> list[Series]:
    """Series by name: a training collection (TRAINING_SETS), a bundled test series (DATASETS), or
    ``all`` (every bundled test series)."""
    out = []
    for name in names:
        if name in TRAINING_SETS:
            out += TRAINING_SETS[name]()
        elif name == "all":
            out += [load_dataset(n) for n in DATASETS]
        elif name in DATASETS:
            out.append(load_dataset(name))
        else:
            raise UserError(f"unknown dataset {name!r}; training collections: {', '.join(TRAINING_SETS)}; test series: "
                            f"{', '.join(DATASETS)} (or all)")
    return out
