"""Small building blocks shared by the models: the linear layer with its decoding kernel,
normalisation, rotary position embeddings, the KV cache. (Quantized layers are applied from outside:
arlm/compress.)"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import GPTConfig
from arlm.model import kernels


# -- linear layers -------------------------------------------------------------------------------
#
# Decoding one token is a matrix-vector product per layer: every weight is read once per token, so
# its speed is memory bandwidth (bytes of weights / bandwidth). On CPU, a few rows go through the
# kernels of arlm/model/kernels (float32 at the read bandwidth; the quantized layers of arlm/compress
# read bfloat16, int8 and int4 weights at 2, 1 and about 0.56 bytes each); everything else, and every
# device but the CPU, uses torch's own matrix multiply.


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose few-row inference case (decoding) takes the
    bandwidth-bound CPU kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decode steps (one new position per row) take the kernel at every batch size it serves, not
        # only where it is faster than torch's matmul: its rows are summed alike whatever their number,
        # so a sequence decodes to the same tokens alone or in a batch (the engine's batch invariance).
        rows = x.numel() // x.size(-1)
        decoding = x.dim() == 3 and x.size(1) == 1 and rows <= kernels.MAX_DECODE_ROWS
        if (rows <= kernels.MAX_ROWS or decoding) and kernels.usable(x, self.weight, self.bias):
            many = kernels.many_rows_linear(x, self.weight, self.bias)  # beam search's rows (throughput mode)
            if many is not None:
                return many(x, self.weight, self.bias)
            return kernels.linear(x, self.weight, None, self.bias).to(x.dtype)
        return F.linear(x, self.weight, self.bias)


# -- normalisation ---------------------------------------------------------------------------------


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


class KVCache(NamedTuple):
    """Keys and values of every layer for a pool of sequences, preallocated: ``k[i]`` and ``v[i]`` of layer
    i, each (rows, nkv, max_len, hs); position p of row b holds token p of the sequence in that row.

    The caller owns it (the decoding engine: one row per running sequence) and passes it to
    ``GPT.forward`` with each new token's row position; the model keeps no state between calls. Fixed
    shapes, with the positions as a tensor, let one compiled decode step serve every sequence length
    (the approach of gpt-fast). A NamedTuple of lists, so torch.compile takes it as an argument.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(cls, n_layer: int, rows: int, n_kv_head: int, max_len: int, head_dim: int,
              dtype: torch.dtype, device: torch.device | str) -> "KVCache":
        shape = (rows, n_kv_head, max_len, head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)])

    @property
    def rows(self) -> int:
        return self.k[0].size(0)

    @property
    def max_len(self) -> int:
        return self.k[0].size(2)

    def view(self, start: int, stop: int) -> "KVCache":
        """Rows ``start .. stop-1`` (the same memory: writes through the view land in this cache)."""
        return KVCache([k[start:stop] for k in self.k], [v[start:stop] for v in self.v])

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Positions 0 .. length-1 of row ``src`` into row ``dst`` (the n samples of one prompt)."""
        for t in (*self.k, *self.v):
            t[dst, :, :length] = t[src, :, :length]

    def reorder(self, rows: torch.Tensor, length: int | None = None) -> None:
        """Make row b hold what row ``rows[b]`` held in its first ``length`` positions (default all), in
        place: beam search keeps the surviving beams."""
        n = length or self.max_len
        for t in (*self.k, *self.v):
            t[:, :, :n] = t[:, :, :n].index_select(0, rows)

    def read(self, row: int, start: int, stop: int) -> torch.Tensor:
        """Positions start .. stop-1 of one row, every layer: a copy (n_layer, 2, nkv, stop-start, hs)."""
        return torch.stack([torch.stack((k[row, :, start:stop], v[row, :, start:stop])) for k, v in zip(self.k, self.v)])

    def write(self, row: int, start: int, block: torch.Tensor) -> None:
        """Store a :meth:`read` block at positions start .. of ``row``."""
        stop = start + block.size(3)
        for i, (k, v) in enumerate(zip(self.k, self.v)):
            k[row, :, start:stop] = block[i, 0]
            v[row, :, start:stop] = block[i, 1]


def cache_mask(input_pos: torch.Tensor, length: int, window: int = 0) -> torch.Tensor:
    """Which cached positions each new token may attend to: (B, 1, T, length) bool for tokens at
    positions ``input_pos`` (B, T), True for keys at or before the token's own position (and within
    the last ``window`` positions with a sliding window, Mistral; Jiang et al. 2023). Keys past a row's
    position hold older or unused entries: masked, they cost nothing and need no clearing."""
    k_pos = torch.arange(length, device=input_pos.device)  # (S,)
    q_pos = input_pos[:, :, None]  # (B, T, 1)
    mask = k_pos <= q_pos
    if window:
        mask = mask & (k_pos > q_pos - window)
    return mask[:, None]  # (B, 1, T, S)
