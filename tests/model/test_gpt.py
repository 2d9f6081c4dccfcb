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


LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, n_kv_head=2,
             tie_embeddings=False)
ARCHS = {"gpt2": {}, "gpt2-nobias": dict(bias=False), "llama-gqa": LLAMA,
         "llama-mqa-qkvbias-llama3": dict(LLAMA, n_kv_head=1, qkv_bias=True, head_dim=16, rope_scaling="llama3",
                                          rope_factor=4.0, rope_original_block_size=8),
         "speedrun-options": dict(bias=False, activation="relu2", qk_norm=True, logit_softcap=3.0),
         "speedrun-options-rope": dict(LLAMA, qk_norm=True, logit_softcap=15.0)}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_kv_cache_equals_full_recompute(arch):
    m = tiny(**ARCHS[arch])
    x = torch.randint(0, 50, (2, 20))
    full, _ = m(x)  # (B, T, V)
    cache = m.new_cache(2, 24)
    pos = lambda a, b: torch.arange(a, b)[None].expand(2, -1)  # noqa: E731

    def run(a, b, kv_len=None):
        return m(x[:, a:b], cache=cache, input_pos=pos(a, b), kv_len=kv_len)[0]

    with torch.no_grad():
        parts = [run(0, 7, 7)]  # prefill 7 tokens
        parts += [run(t, t + 1) for t in range(7, 12)]  # 5 single-token steps over the whole cache
        parts += [run(12, 20, 20)]  # a chunk of 8 on top of the cache
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_left_padding_does_not_change_the_real_tokens(arch):
    """A prompt padded on the left, with its mask and position ids, gives the logits it gives alone."""
    m = tiny(**ARCHS[arch])
    x = torch.randint(0, 50, (1, 9))
    alone, _ = m(x)
    padded = torch.cat([torch.full((1, 5), 7), x], dim=1)  # 5 pad tokens (any id)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    got, _ = m(padded, key_mask=mask, positions=positions)
    torch.testing.assert_close(got[:, 5:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()  # padding rows attend to themselves: no NaN anywhere


def test_grouped_query_attention_shares_heads():
    m = tiny(**LLAMA)  # 4 query heads, 2 key/value heads
    attn = m.transformer.h[0].attn
    assert attn.c_attn.weight.shape == ((4 + 2 * 2) * 8, 32)
    assert m.lm_head.weight is not m.transformer.wte.weight and "wpe" not in m.transformer


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


def test_recipe_options():
    """relu2 is relu(x)^2; soft-capped logits stay inside (-c, c) and equal c tanh(z / c) of the uncapped
    ones; zero-initialised projections make every block the identity at the start; qk_norm changes the
    function (the queries and keys are normalised) but not the parameters."""
    from arlm.model.gpt import ReLU2

    x = torch.linspace(-3, 3, 13)
    assert torch.equal(ReLU2()(x), torch.clamp(x, min=0) ** 2)
    plain, capped = tiny(), tiny(logit_softcap=2.0)
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain.lm_head.weight.mul_(300.0)  # logits far beyond the cap (the embedding is tied: scale both alike)
        capped.load_state_dict(plain.state_dict())
        z, c = plain(idx)[0], capped(idx)[0]
    assert z.abs().max() > 20.0 and c.abs().max() <= 2.0
    assert torch.allclose(c, 2.0 * torch.tanh(z / 2.0), atol=1e-6)
    m = tiny(zero_init_proj=True)
    assert all(not b.attn.c_proj.weight.any() and not b.mlp.c_proj.weight.any() for b in m.transformer.h)
    with torch.no_grad():
        emb = m.transformer.wte(idx) + m.transformer.wpe(torch.arange(10))
        assert torch.allclose(m(idx)[0], m.head(m.transformer.ln_f(emb)), atol=1e-6)
    a, b = tiny(), tiny(qk_norm=True)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    with torch.no_grad():
        assert not torch.allclose(a(idx)[0], b(idx)[0])


def test_one_query_attention_equals_sdpa_with_grouped_heads():
    import torch.nn.functional as F

    from arlm.model.gpt import one_query_attention

    g = torch.Generator().manual_seed(0)
    for nh, nkv in ((4, 4), (4, 2), (6, 1)):
        q = torch.randn(3, nh, 1, 8, generator=g)
        k, v = torch.randn(3, nkv, 11, 8, generator=g), torch.randn(3, nkv, 11, 8, generator=g)
        want = F.scaled_dot_product_attention(q, k, v, enable_gqa=nkv != nh)
        assert torch.allclose(one_query_attention(q, k, v), want, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(), dict(bias=False, norm="rmsnorm", mlp="gated", activation="silu", n_kv_head=1,
                                         pos_embedding="rope", tie_embeddings=False),
                                dict(qkv_bias=True, bias=False, intermediate_size=40, head_dim=6),
                                dict(attn_bias=True, mlp_bias=True, bias=False, norm="layernorm")])
def test_parameter_count_from_the_config_equals_the_model(kw):
    """The count the memory check uses before building anything is exactly the built model's."""
    from arlm.config import LSTMConfig
    from arlm.model.registry import build_model, parameter_count

    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_embd=24, **kw)
    assert parameter_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())
    for tie in (True, False):
        lstm = LSTMConfig(vocab_size=50, n_layer=2, n_embd=12, tie_embeddings=tie)
        assert parameter_count(lstm) == sum(p.numel() for p in build_model(lstm).parameters())
