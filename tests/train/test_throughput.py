"""MFU: the FLOPs counted per token, the measured peak, and the figure in the training metrics."""

from __future__ import annotations

import json

import pytest
import torch

from arlm.config import GPTConfig, LSTMConfig
from arlm.model import build_model
from arlm.train.loop import train
from arlm.train import throughput
from arlm.train.throughput import flops_per_token, matmul_peak, peak_key
from tests.conftest import tiny_train_config


def test_flops_per_token_is_palms_count():
    """6 x (12 C^2 per block + the tied output layer V x C) + 12 L T C, as nanoGPT's estimate_mfu
    (which also counts the few vector weights: biases and norms); an LSTM has 4 gates x (C + C) x C
    per layer."""
    L, C, T, V = 3, 48, 32, 50
    gpt = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C)
    assert flops_per_token(build_model(gpt)) == 6 * (L * 12 * C * C + V * C) + 12 * L * T * C
    lstm = LSTMConfig(vocab_size=V, block_size=T, n_layer=2, n_embd=C)
    assert flops_per_token(build_model(lstm)) == 6 * (2 * 4 * 2 * C * C + V * C)


def test_matmul_peak_is_measured_once_per_machine_and_leaves_the_rng_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    monkeypatch.setattr(throughput, "_PEAKS", {})  # as in a new process
    cpu = torch.device("cpu")
    state = torch.get_rng_state()
    first = matmul_peak(cpu, torch.float64, seconds=0.05)
    assert torch.equal(torch.get_rng_state(), state)  # a run's dropout must not depend on it
    assert 1e8 < first < 1e14
    assert json.loads((tmp_path / throughput.PEAKS_FILE).read_text()) == {peak_key(cpu, torch.float64): first}
    # the next process reads the figure instead of timing products again
    monkeypatch.setattr(throughput, "_PEAKS", {})
    monkeypatch.setattr(throughput, "_measure_peak", lambda *a: pytest.fail("measured again"))
    assert matmul_peak(cpu, torch.float64) == first
    threads = torch.get_num_threads()
    try:  # another thread count, dtype or torch version is another machine
        torch.set_num_threads(1 if threads > 1 else 2)
        assert peak_key(cpu, torch.float64) != peak_key(cpu, torch.float32)
        assert peak_key(cpu, torch.float64) not in json.loads((tmp_path / throughput.PEAKS_FILE).read_text())
    finally:
        torch.set_num_threads(threads)
    assert "torch " + torch.__version__ in peak_key(cpu, torch.float64)


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"cpu: x": "fast"}', ""])
def test_a_damaged_peak_cache_is_measured_again_and_repaired(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    monkeypatch.setattr(throughput, "_PEAKS", {})
    (tmp_path / throughput.PEAKS_FILE).write_text(damage)
    peak = matmul_peak(torch.device("cpu"), torch.float64, seconds=0.02)
    assert peak > 1e8
    assert json.loads((tmp_path / throughput.PEAKS_FILE).read_text()) == {peak_key(torch.device("cpu"), torch.float64): peak}


def test_an_unwritable_peak_cache_still_gives_a_peak(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ARLM_CACHE", str(blocker / "arlm"))  # its parent is a file: nothing can be written
    monkeypatch.setattr(throughput, "_PEAKS", {})
    assert matmul_peak(torch.device("cpu"), torch.float64, seconds=0.02) > 1e8
    assert blocker.read_text() == "not a folder"


def test_training_logs_mfu(char_data, tmp_path):
    summary = train(tiny_train_config(char_data, tmp_path / "run", max_steps=6))
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mfus = [r["mfu"] for r in rows if "loss" in r]
    assert len(mfus) == 6 and all(0 < m < 1.5 for m in mfus)
    assert 0 < summary["mfu"] < 1.5 and summary["peak_flops"] > 1e8


def test_a_peak_timed_on_a_busy_machine_is_measured_again(tmp_path, monkeypatch, char_data, caplog):
    """A cached peak below what a run reaches (MFU > 100%) was timed while the machine was busy: the run
    says so, and the next run measures it again."""
    from tests.conftest import tiny_train_config
    from arlm.train.loop import train

    monkeypatch.setenv("ARLM_CACHE", str(tmp_path))
    monkeypatch.setattr(throughput, "_PEAKS", {})
    cpu, other = torch.device("cpu"), peak_key(torch.device("cpu"), torch.float64)
    (tmp_path / throughput.PEAKS_FILE).write_text(json.dumps({peak_key(cpu, torch.float32): 1e3, other: 5e9}))
    summary = train(tiny_train_config(char_data, tmp_path / "run", max_steps=4))
    assert summary["mfu"] > 1 and "measured again next run" in caplog.text
    assert json.loads((tmp_path / throughput.PEAKS_FILE).read_text()) == {other: 5e9}  # only that figure dropped
    monkeypatch.setattr(throughput, "_PEAKS", {})
    assert matmul_peak(cpu, torch.float32, seconds=0.02) > 1e8
