"""LoRA: starts as the base model, merged logits equal base + adapter logits, only adapters learn."""

from __future__ import annotations

import pytest
import torch

from arlm.config import GPTConfig
from arlm.errors import UserError
from arlm.model import GPT
from arlm.model.lora import LoRALinear, adapter_state, apply_lora, merge_lora


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **kw)).eval()


@pytest.mark.parametrize("kw", [{}, dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu",
                                          bias=False, n_kv_head=1, tie_embeddings=False)])
def test_merged_logits_equal_base_plus_adapter(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 50, (2, 12))
    base_logits = model(idx)[0]
    n = apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=["c_attn", "c_proj", "c_fc"])
    assert n == sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    assert torch.equal(model(idx)[0], base_logits)  # B = 0: training starts from the base model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
    adapted = model(idx)[0]
    assert not torch.allclose(adapted, base_logits, atol=1e-3)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(idx)[0], adapted, rtol=1e-5, atol=1e-5)


def test_only_adapters_train_and_state_names():
    model = tiny()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, alpha=4.0, dropout=0.1, targets=["c_attn"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("c_attn.lora_A", "c_attn.lora_B")) for n in trainable)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 50, (4, 16))
    for _ in range(3):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in base.items())  # base weights untouched, under their own names
    assert set(adapter_state(sd)) == {k for k in sd if ".lora_" in k} and len(adapter_state(sd)) == 4


def test_unknown_targets_list_the_model_layers():
    with pytest.raises(UserError, match="c_attn, c_fc, c_proj"):
        apply_lora(tiny(), rank=2, alpha=4.0, dropout=0.0, targets=["q_proj"])
