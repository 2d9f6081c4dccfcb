"""arlm sweep: grids and random searches over config keys, each trial a real run, results sorted."""

from __future__ import annotations

import csv

import pytest

from arlm.cli import main
from arlm.errors import UserError
from arlm.train.sweep import parse_param, trials


def test_parameters_grid_and_random_draws():
    assert parse_param("lr=1e-3,3e-3") == ("lr", [1e-3, 3e-3])
    assert parse_param("model.n_embd=32,48") == ("model.n_embd", [32, 48])
    assert parse_param("model.dropout=0:0.3") == ("model.dropout", ("uniform", 0.0, 0.3))
    assert parse_param("batch_size=4:16") == ("batch_size", ("int", 4, 16))
    grid = trials(["lr=1,2", "model.n_layer=1,2,3"], 0, 0)
    assert len(grid) == 6 and {"lr": 2, "model.n_layer": 3} in grid
    drawn = trials(["lr=log:1e-4:1e-2", "model.n_layer=1,2", "batch_size=4:16"], 50, 1)
    assert len(drawn) == 50 and drawn == trials(["lr=log:1e-4:1e-2", "model.n_layer=1,2", "batch_size=4:16"], 50, 1)
    assert all(1e-4 <= d["lr"] <= 1e-2 and d["model.n_layer"] in (1, 2) and 4 <= d["batch_size"] <= 16 for d in drawn)
    assert len({d["lr"] for d in drawn}) > 40  # continuous, not a few values
    for bad, msg in [("lr", "KEY=V1"), ("nope=1,2", "not a key"), ("model.out=1", "not a key"),
                     ("lr=log:-1:2", "positive"), ("lr=a:b", "not a number")]:
        with pytest.raises(UserError, match=msg):
            trials([bad], 0, 0)
    with pytest.raises(UserError, match="--trials"):
        trials(["lr=1e-4:1e-2"], 0, 0)


def test_sweep_runs_trials_and_sorts_them(char_data, tmp_path, capsys):
    cfg = tmp_path / "base.toml"
    cfg.write_text("batch_size = 4\neval_interval = 4\neval_batches = 1\nwarmup_steps = 1\nlog_interval = 2\n"
                   "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\ndropout = 0.0\n")
    out = tmp_path / "sweep"
    code = main(["sweep", "--config", str(cfg), "--data", str(char_data), "--out", str(out), "--max-steps", "8",
                 "--param", "lr=1e-4,3e-3", "--param", "model.n_head=2,3"])  # 16 is not divisible by 3: two trials fail
    assert code == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and [r["status"] for r in rows[:2]] == ["completed", "completed"]
    assert all(r["status"].startswith("error: model.n_embd (16) must be divisible") for r in rows[2:])
    assert float(rows[0]["val_loss"]) <= float(rows[1]["val_loss"])
    assert rows[0]["lr"] == "0.003"  # the larger learning rate learns more in 8 steps
    assert (out / rows[0]["trial"] / "best" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "results:" in printed and printed.index(rows[0]["trial"]) < printed.index(rows[1]["trial"])
    assert main(["sweep", "--config", str(cfg), "--data", str(char_data), "--out", str(out), "--param", "lr=1e-3"]) == 2
