"""Looking inside a GPT: attention maps, each token's probability and rank, the logit lens, and the
loss with each attention head switched off. Every function returns arrays (the CLI draws and prints
them: ``arlm inspect``); the model is read through hooks from outside, never changed.

* :func:`attention` — softmax(q k^T / sqrt(hs)) of every layer and head, (n_layer, n_head, T, T),
  recomputed from each block's attention input with the model's own projection and rotary embedding.
* :func:`token_report` — for each token after the first: log-probability, rank among the vocabulary
  and the top alternatives.
* :func:`logit_lens` — nostalgebraist's "logit lens" (2020): the residual stream after the embedding
  and after each block, put through the final norm and the output layer, read as a next-token
  prediction: (n_layer + 1, T, vocab) log-probabilities.
* :func:`head_ablation` — the loss on some text with each head's output zeroed alone, minus the
  loss with every head: what the model loses without it (arlm/compress/prune.py's head_importance).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlm.compress.prune import calibration_loss, head_importance
from arlm.data.loader import sequential_batches
from arlm.errors import UserError
from arlm.model.layers import apply_rope, rope_cos_sin


def _check(model, ids: list[int]) -> torch.Tensor:
    if getattr(model.config, "type", "gpt") != "gpt":
        raise UserError(f"inspection reads a GPT's attention and residual stream; this model is {model.config.kind}")
    if len(ids) < 2:
        raise UserError("the text is too short: it needs at least 2 tokens")
    if len(ids) > model.config.block_size:
        raise UserError(f"the text has {len(ids)} tokens and the model reads {model.config.block_size} at a time; "
                        f"shorten it")
    return torch.tensor([ids], device=next(model.parameters()).device)


def _block_inputs(model, x: torch.Tensor, module_of) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What each block's ``module_of(block)`` receives during one forward pass, and the logits."""
    seen: list[torch.Tensor] = []
    hooks = [module_of(b).register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
             for b in model.transformer.h]
    try:
        with torch.inference_mode():
            logits = model(x)[0]
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def attention(model, ids: list[int]) -> np.ndarray:
    """Attention probabilities (n_layer, n_head, T, T): row i is what position i reads."""
    x = _check(model, ids)
    inputs, _ = _block_inputs(model, x, lambda b: b.attn)
    T = x.size(1)
    pos = torch.arange(T, device=x.device)
    allowed = pos[None, :] <= pos[:, None]
    if model.config.sliding_window:
        allowed &= pos[None, :] > pos[:, None] - model.config.sliding_window
    rope = rope_cos_sin(pos[None], model.rope_inv_freq) if model.rope_inv_freq is not None else None
    maps = []
    with torch.inference_mode():
        for block, h in zip(model.transformer.h, inputs):
            a = block.attn
            nh, nkv, hs = a.n_head, a.n_kv_head, a.hs
            q, k, _ = a.c_attn(h).split([nh * hs, nkv * hs, nkv * hs], dim=2)
            q = q.view(1, T, nh, hs).transpose(1, 2)  # (1, nh, T, hs)
            k = k.view(1, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(hs)  # (1, nh, T, T)
            maps.append(torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)[0])
    return torch.stack(maps).cpu().numpy()


def token_report(model, ids: list[int], top: int = 5) -> list[dict]:
    """One entry per token after the first: its id, log-probability, rank (1 = the model's first choice)
    and the ``top`` most likely ids with their log-probabilities."""
    x = _check(model, ids)
    with torch.inference_mode():
        logp = torch.log_softmax(model(x)[0][0].float(), dim=-1)  # (T, V)
    out = []
    for t in range(1, len(ids)):
        row, actual = logp[t - 1], ids[t]
        best = row.topk(min(top, row.numel()))
        out.append({"position": t, "id": actual, "logprob": float(row[actual]),
                    "rank": int((row > row[actual]).sum()) + 1,
                    "top": [(int(i), float(v)) for v, i in zip(best.values, best.indices)]})
    return out


def logit_lens(model, ids: list[int]) -> np.ndarray:
    """Log-probabilities (n_layer + 1, T, vocab) of the next token read from the residual stream after the
    embedding (row 0) and after each block (the last row is the model's own output)."""
    x = _check(model, ids)
    streams, logits = _block_inputs(model, x, lambda b: b)  # the input of block i = the stream after i - 1
    with torch.inference_mode():
        rows = [model.head(model.transformer.ln_f(s))[0] for s in streams] + [logits[0]]
        return torch.log_softmax(torch.stack(rows).float(), dim=-1).cpu().numpy()


def head_ablation(model, ids: np.ndarray, batch_size: int = 8) -> tuple[float, np.ndarray]:
    """(mean loss with every head, (n_layer, n_head) rise of that loss with each head zeroed alone) over the
    non-overlapping windows of ``ids`` (each batch's mean loss weighs the same)."""
    if getattr(model.config, "type", "gpt") != "gpt":
        raise UserError(f"head ablation reads a GPT's attention heads; this model is {model.config.kind}")
    if len(ids) < 2:
        raise UserError("the text is too short: it needs at least 2 tokens")
    device = next(model.parameters()).device
    batches = [(x.to(device), y.to(device)) for x, y in sequential_batches(ids, model.config.block_size, batch_size)]
    return calibration_loss(model, batches), head_importance(model, batches).numpy()
