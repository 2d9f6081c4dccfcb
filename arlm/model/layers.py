"""Small building blocks shared by the models: linear layers and their weight formats for decoding,
normalisation, rotary position embeddings, KV cache."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import GPTConfig


# -- linear layers -------------------------------------------------------------------------------
#
# Decoding one token is a matrix-vector product per layer: every weight is read once per token, so
# its speed is memory bandwidth (bytes of weights / bandwidth). On CPU, BLAS kernels reach about half
# of the bandwidth for one row and less for a few (measured in bench/decode.py), so under
# ``torch.compile`` up to MAX_MATVEC_ROWS rows are written as sums of products, which inductor turns
# into one vectorised loop per layer that streams the weight once for all rows. Smaller weight
# formats (bfloat16, int8) cut the bytes read; their packed layouts below keep every load a
# full-width float load (inductor's partial-width loads of 8/16-bit vectors are slow) and unpack
# with integer shifts in registers.


MAX_MATVEC_ROWS = 8  # up to this many rows (batch x new tokens), one fused loop beats BLAS on CPU


def _few_rows(x: torch.Tensor) -> bool:
    """True inside torch.compile when ``x`` (..., in) has at most MAX_MATVEC_ROWS rows (decoding a small batch)."""
    return torch.compiler.is_compiling() and x.numel() <= MAX_MATVEC_ROWS * x.size(-1)


@torch.library.custom_op("arlm::materialize", mutates_args=())
def materialize(x: torch.Tensor) -> torch.Tensor:
    """A copy that inductor cannot fuse into its consumer. Without it, a norm feeding a matrix-vector
    product is recomputed inside the product's loop for every output row (measured 10-15% slower)."""
    return x.clone()


@materialize.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def matvec(x: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """x (..., in) @ W.T for a weight given as column blocks [W_0 | W_1 | ...] (each (out, in/len)),
    written as one reduction per row and block. Under torch.compile the reductions share one loop
    over the weight, so each weight element is loaded once for all rows (only sensible there)."""
    lead, n = x.shape[:-1], blocks[0].size(1)
    rows = x.float().reshape(-1, x.size(-1))  # (R, in)
    if rows.size(0) * len(blocks) == 1:  # a single slice reads it: inductor would inline its producer into the loop
        rows = materialize(rows)
    out = torch.stack([sum((rows[r, k * n:(k + 1) * n] * w).sum(-1) for k, w in enumerate(blocks))
                       for r in range(rows.size(0))])  # (R, out)
    return out.view(*lead, -1)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose few-row case compiles to bandwidth-bound reductions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _few_rows(x) and self.weight.dtype == torch.float32:
            y = matvec(x, [self.weight]).to(x.dtype)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


def pack_bits(w: torch.Tensor, parts: int) -> torch.Tensor:
    """Pack a 16-bit (parts=2) or 8-bit (parts=4) weight (out, in) into float32 words (out, in/parts):
    bits 16k.. (or 8k..) of word j hold column k*in/parts + j, so each slice of ``x`` is contiguous."""
    out, inp = w.shape
    return w.view(out, parts, inp // parts).transpose(1, 2).contiguous().view(torch.float32).view(out, inp // parts)


def unpack_bits(words: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """The ``parts`` column blocks of a packed weight: float32 for bfloat16, float32 integer values for int8."""
    w = words.view(torch.int32)
    if parts == 2:  # a bfloat16 is the top half of a float32
        return [(w << 16).view(torch.float32), (w & -65536).view(torch.float32)]
    # sign-extended byte k: shift it to the top, then arithmetically back down (the top byte needs no left shift)
    return [((w if k == 3 else w << (24 - 8 * k)) >> 24).float() for k in range(4)]


class PackedLinear(nn.Module):
    """A linear layer with bfloat16 weights, or int8 weights and one float scale per output channel
    (weight-only quantisation: activations stay in float). Built from a float ``nn.Linear`` by
    :func:`arlm.compress.quantize.quantize`; ``dequantized()`` gives the float weight back."""

    def __init__(self, linear: nn.Linear, fmt: str):
        super().__init__()
        assert fmt in ("bfloat16", "int8")
        w = linear.weight.detach().float()
        out, inp = w.shape
        self.fmt, self.in_features, self.out_features = fmt, inp, out
        self.parts = 2 if fmt == "bfloat16" else 4
        if inp % self.parts:
            raise ValueError(f"{fmt} packing needs in_features divisible by {self.parts}, got {inp}")
        if fmt == "int8":
            # Symmetric per-output-channel scales (as in LLM.int8's vector-wise quantisation without
            # outliers, Dettmers et al. 2022, and gpt-fast's int8 weight-only mode): w ~ scale * q, q in [-127, 127].
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
            q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
            self.register_buffer("scale", scale)
        else:
            q = w.to(torch.bfloat16)
            self.register_buffer("scale", None)
        self.register_buffer("words", pack_bits(q, self.parts))  # (out, in/parts) float32 bit patterns
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def stored(self) -> torch.Tensor:
        """The stored weight (out, in): bfloat16, or int8 before scaling (undoing the packing order)."""
        dtype = torch.bfloat16 if self.parts == 2 else torch.int8
        packed = self.words.view(dtype).view(self.out_features, -1, self.parts)  # (out, in/parts, parts)
        return packed.transpose(1, 2).reshape(self.out_features, self.in_features)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with."""
        w = self.stored().float()
        return w if self.scale is None else w * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _few_rows(x):
            y = matvec(x, unpack_bits(self.words, self.parts))  # (..., out)
        else:  # many rows (prefill): widen the weight once and use the float matrix kernel
            y = F.linear(x.float(), self.stored().float())
        if self.scale is not None:
            y = y * self.scale  # per output channel, so it can follow the product
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.fmt}"


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
