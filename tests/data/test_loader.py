"""Training windows: random (with replacement) and by epoch (without), and resuming the order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arlm.data.loader import WindowSampler, random_batch, windows


def _sampler(order="epoch", n=1000, block=16, seed=3):
    return WindowSampler(n, block, 1, order, seed, torch.Generator().manual_seed(seed))


def test_epoch_visits_disjoint_windows_once_then_reshuffles():
    n, block = 1000, 16
    s = _sampler(n=n, block=block)
    first = s.next(len(s._epoch_starts()))
    assert s.state_dict() == {"epoch": 1, "index": 0}
    offset = min(first)
    assert sorted(first) == list(range(offset, offset + block * len(first), block))  # disjoint, no repeats
    assert offset < block and max(first) + block + 1 <= n and len(first) == (n - 1 - offset) // block
    assert first != sorted(first)  # shuffled
    second = s.next(len(s._epoch_starts()))
    assert second != first  # a new order (and offset) each epoch


def test_epoch_order_resumes_from_its_position():
    a = _sampler()
    a.next(50)  # into the second epoch
    state = a.state_dict()
    b = _sampler()
    b.load_state_dict(state)
    assert b.next(100) == a.next(100)


def test_random_order_is_nanogpts_uniform_draw():
    data = np.arange(500, dtype=np.uint16)
    s = _sampler("random", n=500, block=8, seed=0)
    x, y = windows(data, s.next(6), 8)
    rx, ry = random_batch(data, 6, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, rx) and torch.equal(y, ry)
    assert torch.equal(y[:, :-1], x[:, 1:])


@pytest.mark.parametrize("n", [17, 20])
def test_split_of_about_one_window(n):
    s = _sampler(n=n, block=16)
    starts = s.next(5)
    assert all(0 <= i and i + 17 <= n for i in starts)
