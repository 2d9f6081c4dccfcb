"""arlm.inspect: attention maps equal transformers' ``output_attentions`` on the same weights (GPT-2 and
Llama with grouped-query attention), the logit lens' last row is the model's output, the token report
is the log-softmax read directly, and ablating a head whose output is zero changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arlm import inspect as ins
from arlm.errors import UserError
from arlm.interop.load import load_model
from tests.interop.hf_models import make_hf_model


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_attention_equals_transformers(tmp_path, kind):
    hf = make_hf_model(tmp_path / kind, kind, attn_implementation="eager")
    ours, _, _ = load_model(tmp_path / kind)
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].numpy()  # (L, nh, T, T)
    mine = ins.attention(ours, ids[0].tolist())
    assert mine.shape == theirs.shape
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


def test_lens_tokens_and_heads(trained_model):
    model, tok, _ = load_model(trained_model / "best")
    ids = tok.encode("ROMEO.\nWhat light through yonder")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0][0], -1).numpy()
    lens = ins.logit_lens(model, ids)
    assert lens.shape == (model.config.n_layer + 1, len(ids), model.config.vocab_size)
    np.testing.assert_allclose(lens[-1], logp, atol=1e-5)
    with torch.no_grad():  # row 0: the embedding alone through the final norm and output layer
        x = model.transformer.wte(torch.tensor([ids])) + model.transformer.wpe(torch.arange(len(ids)))
        row0 = torch.log_softmax(model.lm_head(model.transformer.ln_f(x))[0], -1).numpy()
    np.testing.assert_allclose(lens[0], row0, atol=1e-5)
    report = ins.token_report(model, ids, top=3)
    assert len(report) == len(ids) - 1
    for r in report:
        row = logp[r["position"] - 1]
        assert r["logprob"] == pytest.approx(float(row[r["id"]]), abs=1e-5)
        assert r["rank"] == int((row > row[r["id"]]).sum()) + 1
        assert [i for i, _ in r["top"]] == list(np.argsort(-row)[:3])
    with pytest.raises(UserError, match="reads 32 at a time"):
        ins.attention(model, ids * 3)


def test_ablating_a_silent_head_changes_nothing(trained_model):
    model, tok, _ = load_model(trained_model / "best")
    hs = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[:, hs:2 * hs] = 0  # head 1 of layer 1 writes nothing
    ids = np.asarray(tok.encode("To be, or not to be, that is the question: " * 8), dtype=np.int64)
    base, rise = ins.head_ablation(model, ids)
    assert rise.shape == (2, 2) and rise[1, 1] == pytest.approx(0.0, abs=1e-6)
    assert np.abs(rise).max() > 1e-3 and base > 0
