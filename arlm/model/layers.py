"""Small building blocks shared by the models: normalisation, rotary position embeddings, KV cache."""

from __future__ import annotations

import math

import torch
from torch import nn

from arlm.config import GPTConfig


def make_norm(cfg: GPTConfig) -> nn.Module:
    """LayerNorm (Ba et al. 2016; GPT-2) or RMSNorm (Zhang & Sennrich 2019; Llama), PyTorch's own kernels."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)


# -- rotary position embeddings (RoPE, Su et al. 2021) ------------------------------------------


def rope_inv_freq(cfg: GPTConfig) -> torch.Tensor:
    """Rotation frequency of each pair of channels, (hs/2,), float32: theta^(-2i/hs), then scaled.

    ``linear``: position interpolation (Chen et al. 2023), every frequency divided by the factor.
    ``llama3``: Llama 3.1's rule: wavelengths shorter than original/high_freq_factor are kept,
    longer than original/low_freq_factor are divided by the factor, and the band between is a
    smooth interpolation of the two (Meta's reference ``apply_scaling``).
    """
    hs = cfg.hs
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":
        factor, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old = cfg.rope_original_block_size
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles, each (B, 1, T, hs), float32; positions (B, T)."""
    angles = positions[:, :, None].float() * inv_freq[None, None, :]  # (B, T, hs/2)
    emb = torch.cat((angles, angles), dim=-1)  # (B, T, hs): the two halves rotate together
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of ``x`` (B, nh, T, hs) by the position's angle.

    This is the "rotate half" layout of GPT-NeoX and of Hugging Face's Llama weights (not Meta's
    interleaved pairs), so Hugging Face checkpoints load without permuting q/k weights.
    """
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)


# -- KV cache ------------------------------------------------------------------------------------


class KVCache(nn.Module):
    """Preallocated keys and values of one attention layer, so each new token costs one position.

    The buffers have a fixed shape ``(B, n_kv_head, max_len, hs)``; ``update`` writes the new positions
    in place and returns views of everything written so far. Fixed shapes keep the decode step
    friendly to ``torch.compile`` (the approach of gpt-fast).
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape (B, nkv, T, hs) at positions ``pos .. pos+T-1``; return all keys/values so far."""
        T = k.size(2)
        assert pos + T <= self.max_len, f"KV cache overflow: {pos}+{T} > {self.max_len}"
        self.k[:, :, pos:pos + T] = k
        self.v[:, :, pos:pos + T] = v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]  # (B, nkv, pos+T, hs)

    def reorder(self, rows: torch.Tensor) -> None:
        """Make row b hold what row ``rows[b]`` held (beam search keeps the surviving beams), in place."""
        self.k.copy_(self.k.index_select(0, rows))
        self.v.copy_(self.v.index_select(0, rows))
