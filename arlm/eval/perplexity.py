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
    # Sums stay on the device until the end: reading each batch's loss would make the host wait for
    # the GPU after every batch, instead of queueing the next one.
    total = torch.zeros((), device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    count = torch.zeros((), device=device, dtype=torch.long)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            _, loss = model(x, y)
        n = (y != -1).sum()
        total += torch.where(n > 0, loss.to(total.dtype) * n, 0.0)  # a batch without targets has a NaN loss
        count += n
    model.train(was_training)
    assert int(count) > 0, "no targets to evaluate"
    return float(total) / int(count)


def strided_windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(begin, end, first_scored)`` of the sliding-window method of Hugging Face's guide
    "Perplexity of fixed-length models": a window of up to ``block_size`` tokens moves by ``stride``;
    it scores only the tokens no earlier window scored (those from the previous window's end), each
    with ``block_size - stride`` or more tokens of context (except in the first window). Every token
    after the first is scored once, except that with ``stride == block_size`` (non-overlapping
    windows) a window's first token has no context and is not scored."""
    windows, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + block_size, n)
        windows.append((begin, end, max(prev_end, begin + 1)))  # a window's first token has no context in it
        prev_end = end
        if end == n:
            break
    return windows


@torch.no_grad()
def strided_nll(model: torch.nn.Module, ids: np.ndarray, stride: int, batch_size: int,
                device: torch.device) -> tuple[float, int]:
    """Summed NLL (nats) and number of scored tokens over :func:`strided_windows`.

    The NLL is summed over exactly the scored tokens, so the mean weights every token equally. (The
    guide's code weights each window's mean loss by ``tokens - 1``, one fewer than a window after the
    first really scores; that differs from this in the fifth or sixth digit.)
    """
    was_training = model.training
    model.eval()
    windows = strided_windows(len(ids), model.config.block_size, stride)
    total, count = 0.0, 0
    # Windows of equal length run as one batch (all but possibly the last are block_size long).
    for length in sorted({e - b for b, e, _ in windows}, reverse=True):
        group = [w for w in windows if w[1] - w[0] == length]
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            x = torch.from_numpy(np.stack([ids[b:e] for b, e, _ in chunk])).to(device)
            logp = torch.log_softmax(model(x)[0].float(), dim=-1)  # (B, T, V)
            for row, (b, e, first) in enumerate(chunk):
                targets = x[row, first - b:e - b]  # scored tokens, predicted from the position before each
                total -= logp[row, first - b - 1:e - b - 1].gather(-1, targets[:, None]).sum().item()
                count += e - first
    model.train(was_training)
    return total, count


def evaluate_text(model: torch.nn.Module, tokenizer, text: str, batch_size: int = 8,
                  device: torch.device | str = "cpu", stride: int = 0) -> dict:
    """Score every token of ``text`` after the first.

    ``stride=0``: non-overlapping windows of block_size (fast; a token early in a window has little
    context). ``stride=S``: the sliding-window method (:func:`strided_windows`), ``block_size / S``
    times the compute, and a lower (better) perplexity for models that use their context.
    """
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise UserError("the text is too short to evaluate: it needs at least 2 tokens")
    device = torch.device(device)
    block_size = model.config.block_size
    if stride:
        if not 1 <= stride <= block_size:
            raise UserError(f"stride must be between 1 and the context length ({block_size}), got {stride}")
        nll, n_targets = strided_nll(model, ids, stride, batch_size, device)
        loss = nll / n_targets
    else:
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
        "stride": stride,
    }
