"""`arlm ts` with hostile series: damaged and absurd CSVs, values no float arithmetic holds, constant series, orders
and sizes that would run for minutes; each refused in one line before any model is fitted, and the figures of what
is accepted are finite (JSON has no NaN)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.reliability.conftest import refused, run


def csv(path, values, header="v"):
    path.write_text(header + "\n" + "".join(f"{float(v)!r}\n" for v in values))
    return path


def noisy(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=n)) * 0.1 + rng.normal(size=n)


@pytest.mark.parametrize("values, pattern", [
    (noisy(60) * 1e200, r"values up to .*e\+200, beyond what the forecasters can fit.*rescale the column"),  # AutoARIMA raised
    (np.full(60, 5.0), r"the series v is constant \(all 60 values are 5\): there is nothing to fit"),  # printed nan
    (noisy(60) * 1e-200, r"only values below 1e-100"),
])
@pytest.mark.parametrize("verb", ["fit", "forecast", "backtest"])
def test_series_no_forecaster_can_fit(capsys, tmp_path, values, pattern, verb):
    path = csv(tmp_path / "s.csv", values)
    model = ["--model", "arima"] if verb != "backtest" else ["--horizon", "4", "--windows", "1"]
    refused(capsys, ["ts", verb, "--csv", path, "--column", "v", *model], pattern, keep=tmp_path)


def test_a_neural_forecaster_is_not_given_values_it_scales_to_zero(capsys, series_run, tmp_path):
    path = csv(tmp_path / "huge.csv", noisy(60) * 1e307)  # answered as if the series were zero
    refused(capsys, ["ts", "forecast", "--csv", path, "--column", "v", "--model", series_run / "run"],
            r"values up to .*e\+307", keep=tmp_path)
    refused(capsys, ["ts", "prepare", "--csv", path, "--column", "v", "--synthetic", "0", "--out", tmp_path / "d"],
            r"values up to .*e\+307", keep=tmp_path)


@pytest.mark.parametrize("n, order, pattern", [
    (78, "50,2,50", r"ARIMA\(50,2,50\) has 101 parameters, too many for 78 values \(76 after differencing"),
    (40, "7,1,6", r"has 15 parameters, too many for 40 values"),
    (3000, "30,0,30", r"arima on 3,000 values would take about \d+ minutes; lower p and q"),
])
def test_arima_orders_are_bounded_before_fitting(capsys, tmp_path, n, order, pattern):
    path = csv(tmp_path / "s.csv", noisy(n))
    for verb in ("fit", "forecast"):
        refused(capsys, ["ts", verb, "--csv", path, "--column", "v", "--model", "ar", "--model", "arima", "--order",
                         order], pattern, keep=tmp_path)


def test_long_fits_are_bounded_before_they_start(capsys, tmp_path):
    path = csv(tmp_path / "long.csv", noisy(20_000))
    refused(capsys, ["ts", "forecast", "--csv", csv(tmp_path / "longer.csv", noisy(100_000)), "--column", "v", "--model",
                     "arima"],
            r"arima on 100,000 values would take about \d+ minutes; give a fixed --order", keep=tmp_path)
    refused(capsys, ["ts", "forecast", "--csv", path, "--column", "v", "--max-lag", "1000"],
            r"ar on 20,000 values would take about \d+ minutes; lower --max-lag", keep=tmp_path)
    weekly = tmp_path / "weekly.csv"
    weekly.write_text("date,v\n" + "".join(f"{d.date()},{x}\n" for d, x in
                                            zip(__import__("pandas").date_range("2000-01-02", periods=500, freq="W"),
                                                noisy(500))))
    refused(capsys, ["ts", "forecast", "--csv", weekly, "--column", "v", "--date-column", "date", "--model", "arima"],
            r"AutoARIMA with a seasonal period of 52 would take many minutes", keep=tmp_path)
    refused(capsys, ["ts", "backtest", "--csv", path, "--column", "v", "--windows", "100", "--horizon", "1", "--model",
                     "seasonal-naive", "--model", "arima"],
            r"the backtest's 200 fits would take about \d+ minutes; lower --windows", keep=tmp_path)


def test_exact_fits_report_no_test_and_json_stays_json(capsys, tmp_path):
    path = csv(tmp_path / "ramp.csv", [3 + 0.5 * i for i in range(60)])
    code, out, err = run(capsys, ["ts", "fit", "--csv", path, "--column", "v", "--model", "ar", "--model",
                                  "seasonal-naive"])
    assert code == 0 and err == "", err  # statsmodels' divide-by-zero warning is not printed
    assert out.count("Ljung-Box undefined (the residuals are constant") == 2 and "nan" not in out
    code, out, err = run(capsys, ["ts", "backtest", "--csv", path, "--column", "v", "--horizon", "4", "--json"])
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert report["relative"]["mase"]["seasonal-naive"] == 1.0


@pytest.mark.parametrize("content, pattern", [
    (b"", r"is not a CSV file pandas can read"),
    (b"v\n", r"series has 0 values|at least 8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), r"not a CSV file|no column"),
    (b"v\n1\n2\nthree\n", r"row 4: 'three' in column 'v' is not a number"),
    (b"v\n1\n\n2\n" * 5 + b"v\n", r"not a number|empty cell"),
    (b"v\n" + b"1e999\n" * 10, r"'1e999' in column 'v' is not a number|infinite values"),
    (b"v\n" + b"inf\n" * 10, r"infinite values"),
    (b"v\n" + b"nan\n" * 10, r"empty cell"),
    ("v\n" + "".join(f"{i}\n" for i in range(10)) + "\udce9\n", r"not a number|not a CSV|UTF-8"),
])
def test_damaged_csv_files(capsys, tmp_path, content, pattern):
    path = tmp_path / "s.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape"))
    refused(capsys, ["ts", "forecast", "--csv", path, "--column", "v"], pattern, keep=tmp_path)


def test_a_csv_too_large_to_read_is_refused_by_its_size(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("arlm.data.series.MAX_CSV_BYTES", 100)
    path = csv(tmp_path / "s.csv", noisy(60))
    refused(capsys, ["ts", "fit", "--csv", path, "--column", "v"], r"more than the 0 GiB arlm reads|GiB", keep=tmp_path)


def test_statsforecast_failures_are_one_line(capsys, tmp_path, monkeypatch):
    """What statsforecast raises for a series it cannot fit ("No suitable ARIMA model found") is named, not a trace."""
    import statsforecast.models

    class Failing(statsforecast.models.AutoARIMA):
        def fit(self, y, X=None):
            raise ValueError("No suitable ARIMA model found")

    monkeypatch.setattr(statsforecast.models, "AutoARIMA", Failing)
    path = csv(tmp_path / "s.csv", noisy(60))
    refused(capsys, ["ts", "forecast", "--csv", path, "--column", "v", "--model", "arima"],
            r"arima could not be fitted to this series \(statsforecast: No suitable ARIMA model found\); try another "
            r"--model or a fixed --order", keep=tmp_path)


def test_prepare_bounds_its_records_before_drawing_a_series(capsys, tmp_path):
    refused(capsys, ["ts", "prepare", "--out", tmp_path / "d", "--windows-per-series", "100000000"],
            r"1,000,000,000,000 records of 81 tokens needs about .* lower --synthetic, --windows-per-series",
            keep=tmp_path)  # was 17 GB of memory and climbing


def test_dates_pandas_cannot_parse_are_named_without_its_warning(capsys, tmp_path):
    (tmp_path / "d.csv").write_text("d,v\nsoon,1\n" + "".join(f"2020-01-{i:02d},{i}\n" for i in range(2, 20)))
    refused(capsys, ["ts", "fit", "--csv", tmp_path / "d.csv", "--column", "v", "--date-column", "d"],
            r"row 2: 'soon' in 'd' is not a date", keep=tmp_path)
