"""Loss and perplexity of a model on text.

Perplexity is exp(mean negative log-likelihood per token). Because it depends on the tokenizer,
we also report bits per character and per UTF-8 byte, which compare across tokenizers:
bits = total NLL in nats / ln 2, divided by the characters (or bytes) of the scored text.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from arlm.data.loader import sequential_batches
from arlm.errors import UserError
from arlm.runtime import autocast


@torch.no_grad()
def loss_over_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """Mean next-token cross-entropy (nats) over all targets that are not -1."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            _, loss = model(x, y)
        n = int((y != -1).sum())
        total += loss.float().item() * n
        count += n
    model.train(was_training)
    assert count > 0, "no targets to evaluate"
    return total / count


def evaluate_text(model: torch.nn.Module, tokenizer, text: str, batch_size: int = 8,
                  device: torch.device | str = "cpu") -> dict:
    """Score every token of ``text`` after the first, in non-overlapping windows of block_size."""
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise UserError("the text is too short to evaluate: it needs at least 2 tokens")
    device = torch.device(device)
    block_size = model.config.block_size
    loss = loss_over_batches(model, sequential_batches(ids, block_size, batch_size), device)
    n_targets = len(ids) - 1
    scored = tokenizer.decode(ids[1:].tolist())  # the text whose probability was measured
    nll_bits = loss * n_targets / math.log(2)
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_char": nll_bits / max(1, len(scored)),
        "bits_per_byte": nll_bits / max(1, len(scored.encode("utf-8"))),
        "tokens": int(len(ids)),
        "characters": len(text),
    }
