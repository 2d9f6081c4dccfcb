"""The decode loop: prefill the prompt once, then one cached position per new token.

``prefill`` and ``decode_step`` are separate small functions so each can be compiled on its own.
When the sequence outgrows the model's context window, the window restarts from the last 3/4 of
it (one prefill), rather than recomputing the whole window for every token.
"""

from __future__ import annotations

from typing import Iterator

import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import process_logits, sample
from arlm.model.gpt import GPT


def prefill(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Run the whole window ``idx`` (B, T) from position 0; next-token logits (B, V)."""
    logits, _ = model(idx, pos=0, last_only=True)
    return logits[:, -1, :]


def decode_step(model: GPT, token: torch.Tensor, pos: int) -> torch.Tensor:
    """Feed one token per row (B, 1) at position ``pos`` through the KV cache; logits (B, V)."""
    logits, _ = model(token, pos=pos, last_only=True)
    return logits[:, -1, :]


def window_keep(block_size: int) -> int:
    """Tokens kept when the context window is full and has to slide."""
    return max(1, block_size - block_size // 4)


@torch.inference_mode()
def generate_ids(model: GPT, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                 finished: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each of ``cfg.num_return_sequences`` rows, (B,), one step at a time.

    ``prompt`` must be non-empty and at most block_size long. A row is finished once it emits one of
    ``eos_ids``; the caller may also mark rows finished (e.g. on a stop string) through the
    ``finished`` bool tensor (B,). Generation ends when every row is finished or after max_new_tokens.
    With ``cfg.use_cache`` False the window is recomputed for every token (same tokens, slower).
    """
    assert prompt and len(prompt) <= model.config.block_size
    device = model.transformer.wte.weight.device
    B, block = cfg.num_return_sequences, model.config.block_size
    if finished is None:
        finished = torch.zeros(B, dtype=torch.bool)
    tokens = torch.tensor([prompt] * B, dtype=torch.long, device=device)  # (B, L): everything so far
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    greedy = cfg.temperature == 0
    start = 0  # where the model's window begins in `tokens`

    def forward_window() -> torch.Tensor:
        if cfg.use_cache:
            return prefill(model, tokens[:, start:])
        logits, _ = model(tokens[:, start:], last_only=True)
        return logits[:, -1, :]

    if cfg.use_cache:
        model.setup_cache(B, block)
    try:
        logits = forward_window() if cfg.max_new_tokens > 0 else None
        for i in range(cfg.max_new_tokens):
            nxt = sample(process_logits(logits, tokens, cfg), greedy, gen)  # (B,)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            yield nxt
            if eos.numel():
                finished |= torch.isin(nxt, eos).cpu()
            if bool(finished.all()) or i == cfg.max_new_tokens - 1:
                break
            if tokens.size(1) - start > block:
                start = tokens.size(1) - window_keep(block)
                logits = forward_window()
            elif cfg.use_cache:
                logits = decode_step(model, nxt[:, None], tokens.size(1) - 1 - start)
            else:
                logits = forward_window()
    finally:
        model.clear_cache()
