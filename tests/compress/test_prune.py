"""Pruning (arlm/compress/prune.py): each method removes what it says and nothing else. Removing heads
or MLP units gives exactly the logits of the original model with them switched off; Wanda keeps, per
output row, the weights of highest |W| x input norm; the recovery fine-tune keeps the zeros."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from arlm.compress.prune import (ablated_head, block_linears, calibration_batches, head_importance, input_norms,
                                 neuron_importance, prune_model, remove_heads, remove_neurons, sparsity, wanda)
from arlm.config import GPTConfig
from arlm.errors import UserError
from arlm.model.gpt import GPT

V = 40


def gpt(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, block_size=16, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, tie_embeddings=False)


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (2000,), generator=g).numpy()
    return calibration_batches(tokens, 16, n, batch_size=4, seed=seed)


def test_magnitude_zeroes_the_smallest_weights_of_each_layer():
    m = gpt()
    before = {n: lin.weight.detach().clone() for n, lin in block_linears(m)}
    prune_model(m, "magnitude", 0.3)
    for name, lin in block_linears(m):
        w, old = lin.weight.detach(), before[name]
        zero = w == 0
        assert abs(zero.float().mean().item() - 0.3) < 1 / w.numel() + 1e-6
        assert old[zero].abs().max() <= old[~zero].abs().min()  # the smallest went
        assert torch.equal(w[~zero], old[~zero])  # the rest untouched
    assert not any(hasattr(lin, "weight_mask") for _, lin in block_linears(m))  # permanent: no masks left
    assert torch.equal(m.transformer.wte.weight, gpt().transformer.wte.weight)  # embedding dense


@pytest.mark.parametrize("arch", [{}, LLAMA])
def test_wanda_keeps_the_highest_weight_times_norm_per_row(arch):
    m, b = gpt(**arch), batches()
    ref = gpt(**arch)
    layer0 = block_linears(ref, 0)
    norms = input_norms(ref, layer0, b)  # block 0 sees the dense model's activations, as wanda measures them
    with torch.no_grad():
        wanda(m, 0.5, b)
    for (name, lin), (_, old) in zip(block_linears(m, 0), layer0):
        w = lin.weight.detach()
        score = old.weight.detach().abs() * norms[name][None, :]
        k = int(0.5 * w.size(1))
        assert ((w == 0).sum(1) == k).all()  # each output row loses the same number
        for row in range(w.size(0)):
            dropped, kept = score[row][w[row] == 0], score[row][w[row] != 0]
            assert dropped.max() <= kept.min()
    assert abs(sparsity(m) - 0.5) < 0.01


@pytest.mark.parametrize("arch", [{}, dict(LLAMA, n_kv_head=4)])
def test_removing_heads_equals_switching_them_off(arch):
    m, b = gpt(**arch), batches()
    importance = head_importance(m, b)
    assert importance.shape == (2, 4)
    small = remove_heads(m, importance, 0.5)
    assert small.config.n_head == 2 and small.config.hs == m.config.hs
    assert small.transformer.h[0].attn.c_attn.weight.shape == (3 * 2 * 8, 32)
    dropped = importance.topk(2, dim=1, largest=False).indices
    x = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad(), ExitStack() as stack:
        for layer in range(2):
            for head in dropped[layer].tolist():
                stack.enter_context(ablated_head(m, layer, head))
        want = m(x)[0]
        got = small(x)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", [{}, LLAMA])
def test_removing_neurons_equals_zeroing_them(arch):
    m, b = gpt(**arch), batches()
    importance = neuron_importance(m, b)
    H = m.config.hidden_size
    assert importance.shape == (2, H)
    small = remove_neurons(m, importance, 0.25)
    keep = H - round(0.25 * H)
    assert small.config.hidden_size == keep
    kept = importance.topk(keep, dim=1).indices
    hooks = []
    for i, block in enumerate(m.transformer.h):
        mask = torch.zeros(H)
        mask[kept[i]] = 1
        hooks.append(block.mlp.c_proj.register_forward_pre_hook(lambda mod, args, mask=mask: (args[0] * mask,)))
    x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = m(x)[0]
        got = small(x)[0]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_refusals():
    with pytest.raises(UserError, match="grouped-query"):
        prune_model(gpt(**dict(LLAMA, n_kv_head=2)), "heads", 0.5, batches())
    with pytest.raises(UserError, match="removes no attention head"):
        prune_model(gpt(), "heads", 0.1, batches())
    with pytest.raises(UserError, match="every attention head"):
        prune_model(gpt(), "heads", 0.95, batches())
    with pytest.raises(UserError, match="calibration text.*--data"):
        prune_model(gpt(), "wanda", 0.3, None)
    with pytest.raises(UserError, match="between 0 and 1"):
        prune_model(gpt(), "magnitude", 1.0)


def test_recovery_keeps_the_zeros(char_data, tmp_path):
    """--keep-zeros (what `compress prune --recover-steps` trains with): the zeros of the start stay zero."""
    from arlm.interop.load import load_model, save_model
    from arlm.tokenizers import load_tokenizer
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    tok = load_tokenizer(char_data)
    m = prune_model(gpt(vocab_size=tok.vocab_size), "magnitude", 0.4)
    save_model(tmp_path / "pruned", m, tok)
    cfg = tiny_train_config(char_data, tmp_path / "run", max_steps=6, eval_interval=6, init_from=str(tmp_path / "pruned"),
                            keep_zeros=True)
    cfg.pop("model")
    train(cfg)
    after, _, _ = load_model(tmp_path / "run" / "latest")
    for (_, a), (_, b) in zip(block_linears(after), block_linears(m)):
        assert torch.equal(a.weight == 0, b.weight == 0)
        assert not torch.equal(a.weight, b.weight)  # it did train
