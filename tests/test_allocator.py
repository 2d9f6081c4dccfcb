"""arlm/allocator.py: glibc's malloc keeps freed tensor memory (the values, the switch, the platforms
where it does nothing), and the CLI applies it before a verb runs."""

from __future__ import annotations

import ctypes
import platform

import pytest

from arlm import allocator
from arlm.cli import main

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")


class FakeLibc:
    def __init__(self, answer=1):
        self.calls, self.answer = [], answer

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answer


@glibc
def test_sets_the_mmap_and_trim_thresholds(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    assert allocator.tune_allocator() is True
    assert fake.calls == [(-3, 32 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    refusing = FakeLibc(answer=0)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: refusing)
    assert allocator.tune_allocator() is False


@glibc
def test_applies_on_this_machine_and_can_be_switched_off(monkeypatch):
    assert allocator.tune_allocator() is True  # the real mallopt accepts both values
    monkeypatch.setenv("ARLM_MALLOC_TUNING", "0")
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    assert allocator.tune_allocator() is False and fake.calls == []


@pytest.mark.parametrize("system,libc", [("Darwin", ("", "")), ("Windows", ("", "")), ("Linux", ("musl", "1.2"))])
def test_does_nothing_without_glibc(system, libc, monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "libc_ver", lambda: libc)
    assert allocator.tune_allocator() is False and fake.calls == []


def test_the_cli_tunes_before_the_verb_runs(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr("arlm.cli.tune_allocator", lambda: calls.append(True))
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out")]) == 2
    assert calls == [True]
