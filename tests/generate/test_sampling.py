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
    out = S.repetition_penalty(logits, S.context_seen(torch.tensor([[0, 1, 1]]), 3), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_no_repeat_ngram_bans_completions():
    seq = [1, 2, 3, 1, 2]
    assert S.banned_ngram_tokens(seq, 3) == [3]  # "1 2" was followed by 3 before
    assert sorted(S.banned_ngram_tokens(seq, 1)) == sorted(seq)
    out = S.process_logits(torch.zeros(1, 5), torch.tensor([seq]), GenerateConfig(no_repeat_ngram_size=3, temperature=0))
    assert torch.isinf(out[0, 3]) and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


def test_temperature_zero_is_greedy_and_sampling_respects_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    ctx = torch.zeros(1, 1, dtype=torch.long)
    greedy = S.sample(S.process_logits(logits, ctx, GenerateConfig(temperature=0)), [True], [None])
    assert greedy.tolist() == [1]
    g = torch.Generator().manual_seed(0)
    cfg = GenerateConfig(temperature=1.0, top_k=2)
    draws = {S.sample(S.process_logits(logits, ctx, cfg), [False], [g]).item() for _ in range(200)}
    assert draws == {1, 3}


def test_rows_with_different_controls_equal_each_row_alone():
    """One batch, a different request per row: each row's distribution is the one it gets alone."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    seen = torch.rand(4, 50, generator=g) < 0.2
    params = [GenerateConfig(temperature=0.7, top_k=5), GenerateConfig(top_p=0.8, repetition_penalty=1.3),
              GenerateConfig(min_p=0.1, typical_p=0.9), GenerateConfig(temperature=0)]
    batch = S.process(logits, S.Controls(params, seen=seen))
    for b, p in enumerate(params):
        alone = S.process(logits[b:b + 1], S.Controls([p], seen=seen[b:b + 1]))
        assert torch.equal(batch[b:b + 1], alone)
    assert torch.isinf(batch[0]).sum() == 45 and torch.isfinite(batch[3]).all()


def test_sample_draws_follow_the_softmax_distribution():
    """Inverse-CDF draws: frequencies of 20,000 draws match softmax(logits) (chi-square), tokens with
    zero probability are never drawn, and a row's draws depend only on its own generator."""
    from arlm.generate.sampling import sample

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5, -3.0, float("-inf")]])
    p = torch.softmax(logits, dim=-1)[0]
    g = torch.Generator().manual_seed(0)
    n = 20_000
    draws = torch.stack([sample(logits, [False], [g]) for _ in range(n)]).flatten()
    counts = torch.bincount(draws, minlength=8).double()
    assert counts[4] == 0 and counts[7] == 0
    keep = p > 0
    expected = p[keep].double() * n
    chi2 = float(((counts[keep] - expected) ** 2 / expected).sum())
    assert chi2 < 20.5  # 5 degrees of freedom: p = 0.001
    rows = torch.cat([logits, torch.randn(3, 8)])
    alone = sample(logits, [False], [torch.Generator().manual_seed(5)])
    together = sample(rows, [False] * 4, [torch.Generator().manual_seed(5)] + [torch.Generator().manual_seed(i) for i in range(3)])
    assert together[0] == alone[0]
