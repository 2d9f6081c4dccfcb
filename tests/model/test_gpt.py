"""GPT invariants on tiny CPU configs: shapes, tying, KV cache == full recompute, learning."""

from __future__ import annotations

import pytest
import torch

from arlm.config import GPTConfig
from arlm.model.gpt import GPT


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_shapes_loss_and_weight_tying():
    m = tiny()
    x, y = torch.randint(0, 50, (3, 10)), torch.randint(0, 50, (3, 10))
    logits, loss = m(x, y)
    assert logits.shape == (3, 10, 50) and loss.ndim == 0
    assert m.lm_head.weight is m.transformer.wte.weight
    # A fresh model predicts near-uniformly: loss close to ln(V).
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.2


def test_ignore_index_masks_targets():
    m = tiny()
    x = torch.randint(0, 50, (2, 8))
    y = x.clone()
    y[:, :4] = -1
    _, masked = m(x, y)
    logits, _ = m(x)
    manual = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 50), x[:, 4:].reshape(-1))
    torch.testing.assert_close(masked, manual)


def test_causality_future_tokens_do_not_change_the_past():
    m = tiny()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 50
    torch.testing.assert_close(m(x)[0][:, :8], m(y)[0][:, :8])


@pytest.mark.parametrize("bias", [True, False])
def test_kv_cache_equals_full_recompute(bias):
    m = tiny(bias=bias)
    x = torch.randint(0, 50, (2, 20))
    full, _ = m(x)  # (B, T, V)
    m.setup_cache(batch_size=2)
    with torch.no_grad():
        parts = [m(x[:, :7], pos=0)[0]]  # prefill 7 tokens
        parts += [m(x[:, t:t + 1], pos=t)[0] for t in range(7, 12)]  # 5 single-token steps
        parts += [m(x[:, 12:20], pos=12)[0]]  # a chunk of 8 on top of the cache
    m.clear_cache()
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_rejected():
    m = tiny()
    with pytest.raises(ValueError, match="exceeds block_size"):
        m(torch.zeros(1, 25, dtype=torch.long))


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = tiny().train()
    x = torch.randint(0, 50, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_residual_projection_init_is_scaled():
    m = tiny(n_layer=8, n_embd=64)
    std = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / (2 * 8) ** 0.5) < 0.002
