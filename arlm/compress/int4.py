"""Weight-only int4 in groups (method ``int4``): :class:`Int4Linear`.

Each output channel's weights are cut along the input dimension into groups of G (32, 64 or 128);
a group has a float16 scale s (and, asymmetric, an offset m) and every weight becomes a 4-bit code q
with w ~ s * q + m:

* symmetric (the default): llama.cpp's Q4_0 rule. s = v / -8 where v is the group's weight of largest
  magnitude (so it is represented exactly, as -8 s) and m = -8 s, q = round(w / s) + 8 in 0..15.
  With G = 32 the bits are those of a GGUF Q4_0 block (4.5 bits a weight).
* asymmetric: s = (max - min) / 15 and m = min, q = round((w - m) / s) (the min-max form of
  torchao's and gpt-fast's int4 groups).

Codes are packed two to a byte in the layout of arlm/model/kernels/int4.cpp (block of 32: byte j holds
codes j and j + 16), which is also Q4_0's. Codes are computed from the float16-rounded scale and
offset, so the saved numbers are exactly what decoding uses. On CPU the layer runs arlm::linear_int4;
elsewhere (CUDA, training, no compiler) it multiplies by the dequantized matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlm.errors import UserError
from arlm.io.schema import QuantInfo
from arlm.model import kernels

BLOCK = 32  # codes per packed block (the kernel's unit)
MAX_KERNEL_ROWS = 512  # beyond this many rows (a long prompt), dequantizing once for torch's matmul wins


def check_shape(in_features: int, group_size: int, where: str) -> None:
    if in_features % group_size:
        raise UserError(f"{where} has {in_features} inputs, not a multiple of the int4 group size {group_size}; "
                        f"choose --group-size dividing {in_features}, or --method int8")


def quantize_groups(w: torch.Tensor, group_size: int, symmetric: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes (N, K/2) uint8, scales (N, K/G) float16, offsets (N, K/G) float16 or None) for float ``w`` (N, K)."""
    N, K = w.shape
    g = w.detach().float().reshape(N, K // group_size, group_size)  # (N, groups, G)
    if symmetric:
        big = g.gather(-1, g.abs().argmax(-1, keepdim=True)).squeeze(-1)  # signed value of largest magnitude
        scale = (big / -8.0).half()
        offset = None
        m = -8.0 * scale.float()
    else:
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15.0).half()
        offset = lo.half()
        m = offset.float()
    if not (torch.isfinite(scale).all() and (offset is None or torch.isfinite(offset).all())):
        raise UserError("a weight is too large for int4's float16 scales (|w| > 500000); use --method int8")
    s = scale.float()
    safe = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.round((g - m[..., None]) / safe[..., None]).clamp(0, 15)
    q = torch.where((s == 0)[..., None], 0.0, q)  # a constant group: w = m whatever the code
    return pack(q.reshape(N, K).to(torch.uint8)), scale.contiguous(), None if offset is None else offset.contiguous()


def pack(q: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15 -> (N, K/2) bytes: in each block of 32, byte j = q[j] | q[j + 16] << 4."""
    N, K = q.shape
    blocks = q.reshape(N, K // BLOCK, 2, BLOCK // 2)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(N, K // 2).contiguous()


def unpack(codes: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack`: (..., K/2) bytes -> (..., K) codes (uint8)."""
    blocks = codes.reshape(*codes.shape[:-1], -1, BLOCK // 2)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).reshape(*codes.shape[:-1], -1)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Float32 weights (..., K) from codes (..., K/2) and per-group scales/offsets (..., K/G)."""
    q = unpack(codes).float()
    shape = q.shape
    g = q.reshape(*shape[:-1], -1, group_size)  # (..., groups, G)
    s = scales.float().unsqueeze(-1)
    m = -8.0 * s if offsets is None else offsets.float().unsqueeze(-1)
    return (g * s + m).reshape(shape)


class Int4Linear(nn.Module):
    """A linear layer with 4-bit weights in groups (see the module docstring)."""

    method = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, symmetric: bool,
                 device: torch.device | str | None = None):
        super().__init__()
        assert in_features % group_size == 0 and group_size % BLOCK == 0
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("codes", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer("offsets", None if symmetric else
                             torch.empty(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantInfo) -> Int4Linear:
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, spec.group_size, spec.symmetric, device=weight.device)
        layer.codes, layer.scales, layer.offsets = quantize_groups(weight, spec.group_size, spec.symmetric)
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, spec: QuantInfo,
              device: torch.device | str | None = None) -> Int4Linear:
        return cls(in_features, out_features, bias, spec.group_size, spec.symmetric, device)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with."""
        return dequantize(self.codes, self.scales, self.offsets, self.group_size)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of the float32 weight, (..., in): an embedding lookup in this format."""
        return dequantize(self.codes[idx], self.scales[idx], None if self.offsets is None else self.offsets[idx],
                          self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= MAX_KERNEL_ROWS * x.size(-1) and kernels.int4_usable(x, self.codes):
            return kernels.linear_int4(x, self.codes, self.scales, self.offsets, self.group_size, self.bias).to(x.dtype)
        return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        kind = "symmetric" if self.offsets is None else "asymmetric"
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, {kind}"
