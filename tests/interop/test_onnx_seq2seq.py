"""ONNX export of encoder-decoders (arlm/interop/onnx.py): for every family, ONNX Runtime's encoder
gives the model's cross-attention keys/values, and its decoder, fed the cache each call returns,
gives PyTorch's logits (<= 1e-4) on a padded batch of sources of different lengths; a greedy loop over
the two ONNX graphs writes the same tokens as arlm's engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from arlm.config import LSTMConfig  # noqa: E402
from arlm.errors import UserError  # noqa: E402
from arlm.interop.onnx import empty_seq2seq_cache, export_onnx  # noqa: E402
from arlm.model.registry import build_model  # noqa: E402
from tests.model.test_seq2seq import FAMILIES, model  # noqa: E402


def sessions(tmp_path, m):
    summary = export_onnx(m, tmp_path / "m.onnx", tmp_path / "m.encoder.onnx")
    assert summary["bytes"] > 20_000 and summary["decoder_start_token_id"] == m.config.decoder_start_token_id
    new = lambda name: ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])  # noqa: E731
    return new("m.encoder.onnx"), new("m.onnx")


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 48, (3, 11), generator=g)
    mask = torch.ones_like(src)
    mask[1, 7:] = 0  # sources of 11, 7 and 4 tokens, right-padded
    mask[2, 4:] = 0
    return src * mask, mask


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a - b).max() <= 1e-4 * np.abs(b).max() + 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_encoder_and_decoder_steps_match_pytorch(tmp_path, name):
    m = model(name)
    encoder, decoder = sessions(tmp_path, m)
    src, mask = batch()
    tgt = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(tgt, src=src, src_mask=mask)[0].numpy()
        kv = m.memory_kv(m.encode(src, mask))
    ck, cv = encoder.run(None, {"input_ids": src.numpy(), "attention_mask": mask.numpy()})
    assert close(ck, torch.stack([k for k, _ in kv]).numpy()) and close(cv, torch.stack([v for _, v in kv]).numpy())
    past_k, past_v = (t.numpy() for t in empty_seq2seq_cache(m, 3))
    for a, b in [(0, 1), (1, 2), (2, 5), (5, 6), (6, 9)]:  # the start, single steps, chunks
        logits, past_k, past_v = decoder.run(None, {"input_ids": tgt[:, a:b].numpy(), "attention_mask": mask.numpy(),
                                                    "past_keys": past_k, "past_values": past_v,
                                                    "cross_keys": ck, "cross_values": cv})
        assert close(logits, full[:, a:b]), (name, a, b)
        assert past_k.shape == (m.config.decoder_layers, 3, m.config.n_head, b, m.config.hs)


def test_greedy_decoding_over_the_onnx_graphs_equals_the_engine(tmp_path):
    from arlm.generate.engine import generate_ids
    from arlm.generate.sampling import SamplingParams

    m = model("t5-v1.1", seed=3)
    with torch.no_grad():  # larger weights: a tiny random model then writes varied tokens, not one repeated
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    encoder, decoder = sessions(tmp_path, m)
    src, mask = batch()
    ck, cv = encoder.run(None, {"input_ids": src.numpy(), "attention_mask": mask.numpy()})
    ids = np.full((3, 1), m.config.decoder_start_token_id, dtype=np.int64)
    past_k, past_v = (t.numpy() for t in empty_seq2seq_cache(m, 3))
    out = []
    for _ in range(12):
        logits, past_k, past_v = decoder.run(None, {"input_ids": ids, "attention_mask": mask.numpy(), "past_keys": past_k,
                                                    "past_values": past_v, "cross_keys": ck, "cross_values": cv})
        ids = logits[:, -1].argmax(-1)[:, None]
        out.append(ids[:, 0])
    onnx_tokens = np.stack(out, 1).tolist()
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    ours = generate_ids(m, [src[i, : int(mask[i].sum())].tolist() for i in range(3)], params)  # no end token: 12 each
    assert ours == onnx_tokens


def test_refusals_leave_no_file(tmp_path):
    m = model("bart")
    with pytest.raises(UserError, match="two ONNX files"):
        export_onnx(m, tmp_path / "m.onnx")
    with pytest.raises(UserError, match="GPT and encoder-decoder models; this is an LSTM"):
        export_onnx(build_model(LSTMConfig(vocab_size=20, n_layer=1, n_embd=8, block_size=8)), tmp_path / "l.onnx")
    assert not list(tmp_path.iterdir())
