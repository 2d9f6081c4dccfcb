"""Evaluation figures against a direct computation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arlm.eval.perplexity import evaluate_text
from arlm.interop.load import load_model


def test_eval_equals_direct_token_by_token_nll(trained_model):
    model, tok, _ = load_model(trained_model)
    text = "HAMLET. To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 2
    r = evaluate_text(model, tok, text, batch_size=3)
    ids = torch.tensor(tok.encode(text))
    T = model.config.block_size
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, T):  # non-overlapping windows, as documented
            x, y = ids[s:s + T], ids[s + 1:s + 1 + T]
            x = x[: len(y)]
            logits, _ = model(x[None])
            nll += F.cross_entropy(logits[0], y, reduction="sum").item()
            n += len(y)
    assert n == len(ids) - 1
    assert math.isclose(r["loss"], nll / n, rel_tol=1e-5)
    assert math.isclose(r["perplexity"], math.exp(nll / n), rel_tol=1e-5)
    # Character-level: one token per character, so bits/char = loss / ln 2.
    assert math.isclose(r["bits_per_char"], r["loss"] / math.log(2), rel_tol=1e-6)
    assert r["tokens"] == len(text) and r["characters"] == len(text)
