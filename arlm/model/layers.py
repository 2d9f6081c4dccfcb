"""Small building blocks shared by the models: the key/value cache."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer, so each new token costs one position.

    The buffers have a fixed shape ``(B, nh, max_len, hs)``; ``update`` writes the new positions in
    place and returns views of everything written so far. Fixed shapes keep the decode step friendly
    to ``torch.compile`` (the approach of gpt-fast).
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape (B, nh, T, hs) at positions ``pos .. pos+T-1``; return all keys/values so far."""
        T = k.size(2)
        assert pos + T <= self.max_len, f"KV cache overflow: {pos}+{T} > {self.max_len}"
        self.k[:, :, pos:pos + T] = k
        self.v[:, :, pos:pos + T] = v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]  # (B, nh, pos+T, hs)
