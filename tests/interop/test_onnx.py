"""ONNX export (arlm/interop/onnx.py): ONNX Runtime, fed the cache each call returns, gives PyTorch's
logits (<= 1e-4) for a prompt and for the decode steps after it, for both layouts, batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from arlm.config import GPTConfig  # noqa: E402
from arlm.errors import UserError  # noqa: E402
from arlm.interop.onnx import empty_cache, export_onnx  # noqa: E402
from arlm.model.gpt import GPT  # noqa: E402

LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, tie_embeddings=False,
             n_kv_head=2, qkv_bias=True)


def gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=60, n_layer=2, n_head=4, n_embd=32, block_size=32, dropout=0.0), **kw})).eval()


@pytest.mark.parametrize("arch", [{}, LLAMA, dict(LLAMA, n_kv_head=1, head_dim=16),
                                  dict(activation="relu2", qk_norm=True, logit_softcap=4.0, bias=False)])
def test_prefill_and_decode_steps_match_pytorch(tmp_path, arch):
    m = gpt(**arch)
    summary = export_onnx(m, tmp_path / "m.onnx")
    assert summary["bytes"] > 10_000
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 60, (3, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)[0].numpy()
    past_k, past_v = (t.numpy() for t in empty_cache(m, 3))
    calls = [(0, 6), (6, 7), (7, 8), (8, 11), (11, 12), (12, 14)]  # a prompt, single steps, chunks
    for a, b in calls:
        logits, past_k, past_v = session.run(None, {"input_ids": x[:, a:b].numpy(), "past_keys": past_k,
                                                    "past_values": past_v})
        assert np.abs(logits - full[:, a:b]).max() <= 1e-4 * np.abs(full).max() + 1e-5, (a, b)
        assert past_k.shape == (2, 3, m.config.kv_heads, b, m.config.hs)


def test_refusals(tmp_path):
    from arlm.compress.quantize import quant_spec, quantize_model

    with pytest.raises(UserError, match="sliding-window"):
        export_onnx(gpt(**LLAMA, sliding_window=4), tmp_path / "a.onnx")
    with pytest.raises(UserError, match="float models"):
        export_onnx(quantize_model(gpt(), quant_spec("int8", 0, False)), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())
