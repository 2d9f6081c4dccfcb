"""Hidden states of a model as features of a text: each token's final hidden state (transformers'
``feature-extraction`` pipeline), and one vector per text pooled from them (``arlm embed``).

* A decoder-only Transformer (GPT, Llama family, or one with a task head): the states after its final
  norm, the input of its output layer.
* An encoder-decoder: its encoder's output over the source (what its decoder attends to).
* A masked-language-model encoder (BERT): its last block's output, as transformers' ``BertModel``.

Pooling, as sentence embeddings are usually read from such models:

* ``mean``: the mean over the text's tokens (Reimers & Gurevych 2019, Sentence-BERT, found it the
  best of the simple poolings);
* ``last``: the last token's state, the only one a causal model computes having seen the whole text
  (as a GPT's sequence-classification head reads it; Neelakantan et al. 2022, cpt-text).

A text longer than the model's window is cut to its first ``block_size`` tokens.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import torch

from arlm.errors import UserError
from arlm.model.heads import TaskModel

log = logging.getLogger(__name__)

POOLINGS = ("mean", "last")


def check_features(model) -> None:
    """Hidden states are read from a Transformer: a decoder-only one, a task-head model or an encoder-decoder."""
    if isinstance(model, TaskModel) or getattr(model, "is_encoder_decoder", False) or getattr(model, "is_masked_lm", False):
        return
    if not hasattr(model, "transformer") or not hasattr(model.transformer, "ln_f"):
        raise UserError(f"features are read from a Transformer's hidden states; this is a {model.config.type} model")


def _window(model) -> int:
    cfg = model.config
    return cfg.source_len if getattr(model, "is_encoder_decoder", False) else cfg.block_size


@torch.inference_mode()
def _states(model, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, C) of right-padded ids (B, T)."""
    if isinstance(model, TaskModel):
        return model.hidden(idx)
    if getattr(model, "is_masked_lm", False):  # bidirectional: the padding is masked out
        return model.hidden(idx, torch.arange(idx.size(1), device=idx.device)[None] < lengths[:, None])
    if getattr(model, "is_encoder_decoder", False):
        real = torch.arange(idx.size(1), device=idx.device)[None] < lengths[:, None]  # (B, T)
        return model.encode(idx, real)
    # a causal model never attends to the padding after a token, so no mask is needed; the states
    # are its final norm's output, caught on the way to the output layer
    seen: list[torch.Tensor] = []
    handle = model.transformer.ln_f.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        model(idx, last_only=True)
    finally:
        handle.remove()
    return seen[0]


def token_states(model, rows: list[list[int]], batch_size: int = 16) -> Iterator[torch.Tensor]:
    """Each row's final hidden states (n, C) in float32 on the CPU, rows cut to the model's window."""
    check_features(model)
    T = _window(model)
    if any(len(r) > T for r in rows):
        log.warning("texts longer than the model's %d-token window are cut to their first %d tokens", T, T)
    device = next(model.parameters()).device
    for i in range(0, len(rows), batch_size):
        chunk = [r[:T] or [0] for r in rows[i:i + batch_size]]
        width = max(len(r) for r in chunk)
        idx = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, r in enumerate(chunk):
            idx[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in chunk])
        states = _states(model, idx.to(device), lengths.to(device)).float().cpu()
        for b, n in enumerate(lengths.tolist()):
            yield states[b, :n]


def pooled(model, rows: list[list[int]], pooling: str = "mean", batch_size: int = 16) -> np.ndarray:
    """One vector per row (N, C), float32: the mean or the last of its tokens' final hidden states."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    out = [s.mean(0) if pooling == "mean" else s[-1] for s in token_states(model, rows, batch_size)]
    return torch.stack(out).numpy() if out else np.zeros((0, model.config.n_embd), np.float32)
