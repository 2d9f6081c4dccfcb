"""Device and precision detection (arlm/runtime.py): bfloat16 only where the CPU multiplies it natively."""

from __future__ import annotations

import logging

import pytest
import torch

from arlm import runtime
from arlm.runtime import cpu_has_bf16, cpu_info, resolve_dtype
from arlm.train.loop import train
from tests.conftest import tiny_train_config

CPU = torch.device("cpu")


def _flags(monkeypatch, *flags: str) -> None:
    monkeypatch.setattr(runtime, "cpu_info", lambda: ("Test CPU 9000", frozenset(flags)))


@pytest.mark.parametrize("flags, native", [(("avx2", "avx512f", "avx512_bf16"), True), (("avx512f", "amx_bf16"), True),
                                           (("fp", "asimd", "bf16"), True), (("avx2", "avx512f", "avx512_vnni"), False),
                                           ((), False)])
def test_bf16_detection_reads_the_cpu_flags(flags, native, monkeypatch):
    _flags(monkeypatch, *flags)
    assert cpu_has_bf16() is native


def test_bfloat16_on_a_cpu_with_it_is_bfloat16(monkeypatch, caplog):
    _flags(monkeypatch, "avx512f", "avx512_bf16")
    with caplog.at_level(logging.WARNING, logger="arlm"):
        assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert not caplog.records


def test_bfloat16_on_a_cpu_without_it_warns_and_trains_in_float32(monkeypatch, caplog, char_data, tmp_path):
    _flags(monkeypatch, "avx2", "avx512f")
    with caplog.at_level(logging.WARNING, logger="arlm"):
        assert resolve_dtype("bfloat16", CPU) == torch.float32
    assert "(Test CPU 9000) has no bfloat16 instructions" in caplog.text and "float32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arlm"):
        summary = train(tiny_train_config(char_data, tmp_path / "run", max_steps=2, dtype="bfloat16"))
    assert summary["dtype"] == "float32" and "no bfloat16 instructions" in caplog.text
    # float32 and auto never warn, whatever the CPU
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arlm"):
        assert resolve_dtype("float32", CPU) == resolve_dtype("auto", CPU) == torch.float32
    assert not caplog.records


def test_this_machines_cpu_is_described():
    name, flags = cpu_info()
    assert name  # a model name (Linux) or the platform's processor name
    assert cpu_has_bf16() == any(f in flags for f in runtime.BF16_FLAGS)
