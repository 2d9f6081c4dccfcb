"""Logits processors, one at a time, against hand-computed expectations."""

from __future__ import annotations

import torch

from arlm.config import GenerateConfig
from arlm.generate import sampling as S


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = S.top_k(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert S.top_k(logits, 0) is logits


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(S.top_p(logits, p)).tolist()[0]
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.51) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    assert keep(1e-9) == [True, False, False, False]  # the top token always survives


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = S.repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_no_repeat_ngram_bans_completions():
    seq = [1, 2, 3, 1, 2]
    assert S.banned_ngram_tokens(seq, 3) == [3]  # "1 2" was followed by 3 before
    assert sorted(S.banned_ngram_tokens(seq, 1)) == sorted(seq)
    out = S.no_repeat_ngram(torch.zeros(1, 5), torch.tensor([seq]), 3)
    assert torch.isinf(out[0, 3]) and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


def test_temperature_zero_is_greedy_and_sampling_respects_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    ctx = torch.zeros(1, 1, dtype=torch.long)
    greedy = S.sample(S.process_logits(logits, ctx, GenerateConfig(temperature=0)), greedy=True)
    assert greedy.tolist() == [1]
    g = torch.Generator().manual_seed(0)
    cfg = GenerateConfig(temperature=1.0, top_k=2)
    draws = {S.sample(S.process_logits(logits, ctx, cfg), False, g).item() for _ in range(200)}
    assert draws == {1, 3}
