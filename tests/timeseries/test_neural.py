"""The neural forecaster: records laid out as Chronos tokenises them, a tiny GPT trained by the one loop
that learns a noiseless sine wave to near-zero MASE, forecasts that are repeatable and ordered, and the
refusals of `arlm ts prepare|train|forecast|backtest`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arlm.api import load
from arlm.config import SeriesPrepareConfig
from arlm.data.prepare import write_prepared
from arlm.data.series import DATASETS, TRAINING_SETS, Series, load_series
from arlm.errors import UserError
from arlm.eval.forecast import mase
from arlm.timeseries.backtest import backtest
from arlm.timeseries.classical import forecast
from arlm.timeseries.neural import (MIN_CONTEXT, NeuralForecaster, _real_series, prepare_series,
                                    record, series_records)
from arlm.tokenizers.series import ScaledBinsTokenizer, mean_scale
from arlm.train.loop import train
from tests.conftest import tiny_train_config
from tests.reliability.conftest import refused, run

C, H = 32, 8  # the tiny forecaster's context and prediction lengths
PERIOD = 16


def sine(n: int, amplitude: float, phase: float) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * np.arange(n) / PERIOD + phase)


def test_a_record_is_padding_context_and_target_scaled_by_the_context():
    tok = ScaledBinsTokenizer(bins=101, limit=5.0)
    context, target = np.array([2.0, -2.0, 4.0]), np.array([8.0, 0.0])
    r = record(tok, context, target, context_length=5)
    assert len(r) == 1 + 5 + 2
    assert r[:3].tolist() == [tok.eot_id] * 3  # 1 + (5 - 3) end-of-text before the values
    scale = mean_scale(context)
    assert tok.decode_values(r[3:], (0.0, scale)) == pytest.approx([2.0, -2.0, 4.0, 8.0, 0.0], abs=0.05 * scale)
    # a context longer than context_length keeps its last values
    assert record(tok, np.arange(1.0, 11.0), np.zeros(0), 4).tolist() == record(tok, np.arange(7.0, 11.0), np.zeros(0), 4).tolist()


def test_records_cut_from_long_short_and_too_short_series():
    tok, rng = ScaledBinsTokenizer(bins=64, limit=4.0), np.random.default_rng(0)
    long = series_records(tok, np.arange(1.0, 201.0), 50, C, H, rng)
    assert len(long) == 50 and all(len(r) == C + 1 + H and r[0] == tok.eot_id and r[1] != tok.eot_id for r in long)
    short = series_records(tok, np.arange(1.0, 21.0), 20, C, H, rng)  # 20 values: contexts of 8 to 12, padded
    assert all(len(r) == C + 1 + H and (r == tok.eot_id).sum() >= 1 + C - 12 for r in short)
    assert series_records(tok, np.arange(1.0, H + MIN_CONTEXT), 5, C, H, rng) == []


def test_training_collections_are_not_test_series_and_tails_are_excluded(tmp_path):
    names = {s.name for s in load_series(list(TRAINING_SETS))}
    assert len(names) > 200 and not names & set(DATASETS)
    cfg = SeriesPrepareConfig(out=str(tmp_path / "d"), synthetic=0, dataset=["nile", "macro-cpi"], exclude_tail=24)
    kept = {s.name: s.values for s in _real_series(cfg)}
    for name in ("nile", "macro-cpi"):
        full = DATASETS[name]().values
        assert kept[name].tolist() == full[:-24].tolist()


def test_prepare_writes_series_records_and_holds_out_whole_series(tmp_path):
    meta = prepare_series(SeriesPrepareConfig(out=str(tmp_path / "d"), synthetic=40, synthetic_length=64,
                                              context_length=C, prediction_length=H, windows_per_series=3,
                                              dataset=["danish"], real_windows=5, val_fraction=0.25, seed=3))
    R = C + 1 + H
    assert (meta["modality"], meta["record_tokens"], meta["context_length"], meta["prediction_length"]) == ("series", R, C, H)
    assert meta["train_tokens"] % R == 0 and meta["val_tokens"] % R == 0 and meta["val_tokens"] > 0
    assert meta["train_tokens"] + meta["val_tokens"] == R * (40 * 3 + 5 * 5)
    train_ids = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16).reshape(-1, R)
    assert (train_ids[:, 0] == 4094).all()  # every record opens with end-of-text


@pytest.fixture(scope="module")
def sine_model(tmp_path_factory):
    """A tiny GPT trained by the one loop on records of sine waves (period 16, random amplitude and phase)."""
    root = tmp_path_factory.mktemp("sine")
    tok, rng = ScaledBinsTokenizer(bins=128, limit=3.0), np.random.default_rng(0)
    records = {split: np.concatenate([r for _ in range(n) for r in
                                      series_records(tok, sine(200, rng.uniform(0.5, 50), rng.uniform(0, 2 * np.pi)),
                                                     8, C, H, rng)])
               for split, n in (("train", 120), ("val", 8))}
    write_prepared(root / "data", tok, records["train"], records["val"], modality="series", record_tokens=C + 1 + H,
                   context_length=C, prediction_length=H)
    summary = train(tiny_train_config(root / "data", root / "run", max_steps=250, batch_size=32, lr=1e-2, min_lr=1e-3,
                                      warmup_steps=20, eval_interval=250,
                                      model=dict(block_size=C + 1 + H, n_layer=2, n_head=2, n_embd=64)))
    assert summary["status"] == "completed"
    return root / "run" / "latest"


def test_the_forecaster_learns_a_noiseless_sine_to_near_zero_mase(sine_model):
    fc = NeuralForecaster.of(load(sine_model, device="cpu"), samples=20, seed=0)
    s = Series("sine", sine(120, 7.0, 1.0))  # an amplitude and phase of its own; period 1: MASE against naive
    report = backtest([s], ["seasonal-naive", "neural"], H, 3,
                      lambda m, y, h, p: fc(y, h, p) if m == "neural" else forecast(m, y, h, p))
    r = report["results"]["sine"]
    assert r["neural"]["mase"] < 0.2, r  # quantisation alone: about 0.05
    assert r["seasonal-naive"]["mase"] > 1.0 and r["neural"]["wql"] < 0.1 * r["seasonal-naive"]["wql"]
    # one step: within a bin or two of the true value
    f = fc(s.values[:100], H)
    assert mase(s.values[100:108], f.mean, s.values[:100], 1) < 0.2


def test_forecasts_are_repeatable_ordered_and_long_horizons_are_refused(sine_model):
    lm = load(sine_model, device="cpu")
    fc = NeuralForecaster(lm.model, lm.tokenizer, C, samples=16, seed=5)
    y = sine(80, 3.0, 0.3)
    a, b = fc.paths(y, H), fc.paths(y, H)
    assert a.shape == (16, H) and np.array_equal(a, b)  # the same seed, the same paths
    f = fc(y, H)
    assert (np.diff(f.quantiles, axis=0) >= 0).all()
    assert fc(y[-10:], 4).mean.shape == (4,)  # a history shorter than the context is padded
    with pytest.raises(UserError, match="at most 32 steps ahead"):
        fc(y, C + 1 + H)
    # beyond the trained prediction length but inside the window: the context shrinks to make room
    assert fc(y, 20).mean.shape == (20,)


def test_cli_backtest_with_a_model_folder(sine_model, tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("y\n" + "\n".join(f"{v:.6f}" for v in sine(100, 4.0, 2.0)) + "\n")
    code, out, err = run(capsys, ["ts", "backtest", "--csv", csv, "--column", "y", "--model", "seasonal-naive",
                                  "--model", sine_model, "--horizon", H, "--windows", 2, "--samples", 10, "--json"])
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["results"]["y"]["latest"]["mase"] < 0.3 and r["relative"]["mase"]["latest"] < 0.3
    code, out, err = run(capsys, ["ts", "forecast", "--csv", csv, "--column", "y", "--model", sine_model, "--horizon", 4,
                                  "--out", tmp_path / "f.csv"])
    assert code == 0 and "latest, next 4" in out and (tmp_path / "f.png").is_file()


def test_cli_refusals(sine_model, trained_model, char_data, tmp_path, capsys):
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", trained_model / "best", "--horizon", 8],
            "not trained on series records")
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", tmp_path / "nothing", "--horizon", 8])
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", sine_model, "--horizon", 40, "--windows", 1],
            r"--horizon 40 is beyond what .* can forecast \(32 steps")
    refused(capsys, ["ts", "fit", "--dataset", "nile", "--model", sine_model], "neural forecaster: use")
    short = tmp_path / "short.csv"
    short.write_text("y\n1\n2\n3\n4\n5\n")
    refused(capsys, ["ts", "forecast", "--csv", short, "--column", "y", "--model", sine_model, "--horizon", 2],
            "has 5 values; the neural forecaster needs at least 8")
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", sine_model, "--samples", 0], "--samples")
    refused(capsys, ["ts", "train", "--data", char_data, "--out", tmp_path / "r"], "holds text data")
    refused(capsys, ["ts", "prepare", "--out", tmp_path / "p", "--synthetic", 0], "nothing to train on")
    refused(capsys, ["ts", "prepare", "--out", tmp_path / "p", "--dataset", "moon"], "unknown dataset 'moon'")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused(capsys, ["ts", "prepare", "--out", mine, "--synthetic", 4], keep=mine)


def test_ts_train_takes_one_record_as_its_window_and_fine_tunes(sine_model, tmp_path, capsys):
    data = sine_model.parent.parent / "data"
    small = ["--n-layer", 1, "--n-head", 1, "--n-embd", 16, "--max-steps", 2, "--batch-size", 2, "--eval-batches", 1,
             "--device", "cpu", "--no-final-eval", "--no-progress"]
    code, out, err = run(capsys, ["ts", "train", "--data", data, "--out", tmp_path / "r", *small])
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "latest" / "config.json").read_text())
    assert cfg["model"]["block_size"] == C + 1 + H and cfg["data"]["context_length"] == C
    code, out, err = run(capsys, ["ts", "train", "--data", data, "--out", tmp_path / "ft", "--init-from", sine_model,
                                  "--max-steps", 2, "--batch-size", 2, "--eval-batches", 1, "--device", "cpu",
                                  "--no-final-eval", "--no-progress"])
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "latest" / "config.json").read_text())["model"]["n_embd"] == 64
    refused(capsys, ["ts", "train", "--data", data, "--out", tmp_path / "r2", "--block-size", 40, *small],
            "does not hold whole")


def test_a_standardised_record_keeps_a_level_far_from_zero():
    tok = ScaledBinsTokenizer(bins=4094, limit=15.0, scaling="standard")
    context = 1000 + np.array([1.0, -1.0, 2.0, 0.0])
    r = record(tok, context, np.array([1003.0]), context_length=4)
    loc, scale = tok.affine(context)
    assert loc == pytest.approx(1000.5) and tok.decode_values(r[1:], (loc, scale)) == pytest.approx(
        [1001, 999, 1002, 1000, 1003], abs=0.01)


@pytest.mark.parametrize("argv, message", [
    (["ts", "prepare", "--context-length", 0], "--context-length must be >= 1"),
    (["ts", "prepare", "--synthetic-length", 10], "--synthetic-length must be >= 16"),
    (["ts", "prepare", "--synthetic-length", 20], "leaves too little context"),
    (["ts", "prepare", "--val-fraction", 1], "--val-fraction must be between 0 and 1"),
    (["ts", "prepare", "--csv", "x.csv"], "--csv needs --column"),
    (["ts", "prepare", "--bins", 1], "bins must be between 2"),
    (["ts", "prepare", "--synthetic", 0, "--dataset", "nile", "--exclude-tail", 500], "too few series"),
    (["image", "prepare", "--source", "digits", "--shift", 9], "--shift must be between 0 and 8"),
])
def test_bad_prepare_flags_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    refused(capsys, [*argv, "--out", out], message, keep=tmp_path)
    assert not out.exists()


def test_an_unknown_scaling_is_argparses_one_line(tmp_path, capsys):
    code, out, err = run(capsys, ["ts", "prepare", "--scaling", "log", "--out", tmp_path / "o"])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "invalid choice: 'log'" in err
    assert not (tmp_path / "o").exists()


def test_bad_forecast_options_and_a_damaged_tokenizer(sine_model, tmp_path, capsys):
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", sine_model, "--temperature", 0], "--temperature")
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(sine_model, copy)
    tok = copy / "tokenizer.json"
    tok.write_text(json.dumps({**json.loads(tok.read_text()), "scaling": "log"}))
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", copy, "--horizon", 8], "scaling", keep=copy)
