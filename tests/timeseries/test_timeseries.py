"""Time series: the CSV reader's refusals, MASE and WQL by hand, AR(p) == statsmodels' own AutoReg on
the order it selects, the backtest's windows never see their future, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arlm.data.series import DATASETS, Series, load_dataset, read_csv_series
from arlm.errors import UserError
from arlm.eval.forecast import geometric_mean_relative, mase, pinball, wql
from arlm.timeseries.backtest import backtest, origins
from arlm.timeseries.classical import QUANTILES, Forecast, forecast, ljung_box
from tests.reliability.conftest import refused, run


def test_csv_series_in_date_order(tmp_path):
    f = tmp_path / "s.csv"
    f.write_text("month,sales\n2020-03-01,3\n2020-01-01,1\n2020-02-01,2\n2020-04-01,4.5\n")
    s = read_csv_series(f, "sales", "month")
    assert s.values.tolist() == [1, 2, 3, 4.5] and (s.freq, s.period, s.start) == ("MS", 12, "2020-01-01")
    assert read_csv_series(f, "sales").values.tolist() == [3, 1, 2, 4.5]  # file order without dates


@pytest.mark.parametrize("text, args, message", [
    ("d,v\n2020-01-01,1\n2020-02-01,x\n", ("v", "d"), "row 3: 'x' in column 'v' is not a number"),
    ("d,v\n2020-01-01,1\n2020-02-01,\n2020-03-01,3\n", ("v", "d"), "1 empty cell.*row 3"),
    ("d,v\n2020-01-01,1\n2020-02-01,2\n2020-04-01,3\n2020-05-01,4\n", ("v", "d", "MS"), "skip or repeat at 2020-04-01"),
    ("d,v\n2020-01-01,1\n2020-02-01,2\n2020-04-01,3\n2020-05-01,4\n", ("v", "d"), "not evenly spaced"),
    ("d,v\n2020-01-01,1\nsoon,2\n", ("v", "d"), "row 3: 'soon' in 'd' is not a date"),
    ("d,v\n1,2\n", ("w",), "no column 'w'.*its columns: d, v"),
])
def test_bad_csv_series_are_refused(tmp_path, text, args, message):
    f = tmp_path / "s.csv"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        read_csv_series(f, *args)


def test_every_bundled_series_loads_offline():
    for name in DATASETS:
        s = load_dataset(name)
        assert len(s.values) >= 100 and np.isfinite(s.values).all(), name
    assert (load_dataset("co2").period, load_dataset("macro-realgdp").period, load_dataset("nile").period) == (12, 4, 1)


def test_mase_and_wql_by_hand():
    history = np.array([1.0, 3.0, 2.0, 6.0])  # seasonal period 2: |2-1| + |6-3| -> scale 2
    assert mase(np.array([5.0, 7.0]), np.array([4.0, 4.0]), history, 2) == pytest.approx((1 + 3) / 2 / 2)
    assert mase(np.array([5.0]), np.array([4.0]), history, 9) == pytest.approx(1 / ((2 + 1 + 4) / 3))  # short: m = 1
    assert pinball(np.array([10.0]), np.array([8.0]), 0.9)[0] == pytest.approx(1.8)
    assert pinball(np.array([10.0]), np.array([12.0]), 0.9)[0] == pytest.approx(0.2)
    # two quantiles, two steps: 2 * (0.1*1 + 0.9*... ) / 2 levels / sum|y|
    actual, q = np.array([10.0, 20.0]), np.array([[9.0, 21.0], [11.0, 19.0]])
    by_hand = 2 * ((0.1 * 1 + 0.9 * 1) + (0.1 * 1 + 0.9 * 1)) / 2 / 30
    assert wql(actual, q, (0.1, 0.9)) == pytest.approx(by_hand)
    rel = geometric_mean_relative({"a": {"x": 2.0, "b": 1.0}, "b": {"x": 0.5, "b": 1.0}}, "b")
    assert rel == {"b": 1.0, "x": pytest.approx(1.0)}


def test_ar_matches_statsmodels_autoreg_on_the_chosen_order():
    from statsmodels.tsa.ar_model import AutoReg

    y = load_dataset("sunspots").values[:250]
    f = forecast("ar", y, 5, 1, ic="bic", max_lag=12)
    res = AutoReg(y, lags=f.info["p"], trend="c").fit()
    assert np.allclose(f.mean, res.predict(start=250, end=254))
    assert 1 <= f.info["p"] <= 12 and (f.quantiles[0] < f.mean).all() and (f.mean < f.quantiles[-1]).all()
    assert f.quantiles[4] == pytest.approx(f.mean)
    lb = ljung_box(f.residuals)
    assert 0 <= lb["p_value"] <= 1 and lb["lags"] == 10


@pytest.mark.parametrize("model", ["seasonal-naive", "ets", "arima"])
def test_statsforecast_models_give_ordered_quantiles(model):
    s = load_dataset("co2")
    f = forecast(model, s.values[:-12], 12, s.period)
    assert f.mean.shape == (12,) and f.quantiles.shape == (len(QUANTILES), 12)
    assert (np.diff(f.quantiles, axis=0) >= -1e-9).all()
    if model == "seasonal-naive":
        assert np.allclose(f.mean, s.values[-24:-12])  # last season repeated
    else:  # what the automatic model chose, e.g. ARIMA(1,0,1)(0,1,1)[12] or ETS(A,A,A)
        assert f.info["chosen"].startswith("ARIMA(" if model == "arima" else "ETS(")


def test_backtest_windows_never_see_their_future():
    seen = []

    def spy(model, y, h, period):
        seen.append(len(y))
        return Forecast(model, np.full(h, y[-1]), np.tile(np.full(h, y[-1]), (len(QUANTILES), 1)))

    s = Series("ramp", np.arange(40, dtype=float), "", 1)
    report = backtest([s], ["seasonal-naive", "x"], horizon=5, windows=3, fc=spy)
    assert seen == [25, 30, 35] * 2 and origins(40, 5, 3) == [25, 30, 35]
    # last value repeated on a ramp: errors 1..5, scale 1 -> MASE 3 in each window
    assert report["results"]["ramp"]["x"]["mase"] == pytest.approx(3.0)
    assert report["relative"]["mase"]["x"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="cannot hold 9 window"):
        origins(40, 5, 9)


def test_the_cli(tmp_path, capsys):
    code, out, err = run(capsys, ["ts", "backtest", "--dataset", "nile", "--dataset", "sunspots", "--horizon", 5,
                                  "--windows", 2, "--model", "seasonal-naive", "--model", "ar", "--out", tmp_path / "bt"])
    assert code == 0, err
    assert "geo. mean / seasonal-naive" in out and (tmp_path / "bt" / "results.csv").is_file()
    assert (tmp_path / "bt" / "nile.png").stat().st_size > 1000
    rows = (tmp_path / "bt" / "results.csv").read_text().splitlines()
    assert rows[0] == "series,model,mase,wql" and len(rows) == 1 + 4 + 2
    code, out, err = run(capsys, ["ts", "forecast", "--dataset", "co2", "--model", "seasonal-naive", "--horizon", 3,
                                  "--out", tmp_path / "f.csv", "--json"])
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert len(r["forecasts"]["seasonal-naive"]["mean"]) == 3 and (tmp_path / "f.png").is_file()
    code, out, err = run(capsys, ["ts", "fit", "--dataset", "nile", "--model", "ar", "--ic", "bic"])
    assert code == 0 and "Ljung-Box" in out and "ar: p " in out, err


def test_refusals_write_nothing(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("v\n1\n2\nx\n")
    refused(capsys, ["ts", "fit", "--csv", tmp_path / "s.csv", "--column", "v"], "row 4: 'x'", tmp_path)
    refused(capsys, ["ts", "fit", "--dataset", "nile", "--csv", tmp_path / "s.csv"], "not both", tmp_path)
    refused(capsys, ["ts", "fit", "--dataset", "mars"], "unknown dataset 'mars'", tmp_path)
    (tmp_path / "ok30.csv").write_text("v\n" + "\n".join(str(i % 7) for i in range(30)) + "\n")
    refused(capsys, ["ts", "fit", "--csv", tmp_path / "ok30.csv", "--column", "v", "--freq", "XYZ"],
            "--freq 'XYZ' is not a pandas frequency", tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", "ar", "--horizon", 4, "--windows", 1,
                     "--out", tmp_path / "mine"], r"holds files `arlm ts backtest` did not write \(notes.txt\)", tmp_path)
    refused(capsys, ["ts", "fit", "--dataset", "nile", "--model", "prophet"], "unknown --model 'prophet'", tmp_path)
    refused(capsys, ["ts", "forecast", "--dataset", "nile", "--model", "arima", "--order", "1,1"], "p,d,q", tmp_path)
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--horizon", 30, "--windows", 4], "cannot hold 4 window",
            tmp_path)
    (tmp_path / "short.csv").write_text("v\n1\n2\n3\n")
    refused(capsys, ["ts", "forecast", "--csv", tmp_path / "short.csv", "--column", "v"], "at least 8", tmp_path)
    (tmp_path / "ok.csv").write_text("v\n" + "\n".join(str(i % 7) for i in range(30)) + "\n")
    refused(capsys, ["ts", "forecast", "--csv", tmp_path / "ok.csv", "--column", "v", "--out", tmp_path / "ok.csv"],
            "is the CSV being read", tmp_path)
