"""Weight-only int8 with one scale per output channel (method ``int8``), and bfloat16 weights (the
``--precision bfloat16`` load option): one layer class, :class:`QuantizedLinear`.

Symmetric per-output-channel scales, as in LLM.int8's vector-wise quantisation without its outlier
part (Dettmers et al. 2022) and gpt-fast's int8 weight-only mode: w ~ scale * q, q in [-127, 127].
Activations stay in float; on CPU the layer runs arlm::linear (arlm/model/kernels/linear.cpp), which
reads each weight as one byte.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlm.io.schema import QuantInfo
from arlm.model import kernels


class QuantizedLinear(nn.Module):
    """A linear layer with int8 weights and one float scale per output channel, or bfloat16 weights."""

    method = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: str = "int8",
                 device: torch.device | str | None = None):
        super().__init__()
        assert fmt in ("bfloat16", "int8")
        self.fmt, self.in_features, self.out_features = fmt, in_features, out_features
        dtype = torch.int8 if fmt == "int8" else torch.bfloat16
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=dtype, device=device))  # (out, in)
        self.register_buffer("scale", torch.empty(out_features, device=device) if fmt == "int8" else None)  # (out,)
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantInfo | None = None,
                   fmt: str = "int8") -> QuantizedLinear:
        """The layer for a float ``weight`` (out, in) and ``bias``."""
        w = weight.detach().float()
        layer = cls(w.size(1), w.size(0), bias is not None, fmt, device=w.device)
        if fmt == "int8":
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
            layer.weight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            layer.scale = scale
        else:
            layer.weight = w.to(torch.bfloat16).contiguous()
        if bias is not None:
            layer.bias = bias.detach().float().clone()
        return layer

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool, spec: QuantInfo,
              device: torch.device | str | None = None) -> QuantizedLinear:
        """A layer to load saved weights into (``device`` may be meta)."""
        return cls(in_features, out_features, bias, "int8", device)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (out, in) this layer computes with."""
        w = self.weight.float()
        return w if self.scale is None else w * self.scale[:, None]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of the float32 weight, (..., in): an embedding lookup in this format."""
        w = self.weight[idx].float()
        return w if self.scale is None else w * self.scale[idx].unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On CPU, decoding and short prompts take the kernel (each weight read once in its own format);
        # long prompts widen the matrix once for torch's matmul (faster beyond ~64 rows, measured).
        if x.numel() <= kernels.MAX_ROWS_LOW_PRECISION * x.size(-1) and kernels.usable(x, self.weight):
            return kernels.linear(x, self.weight, self.scale, self.bias).to(x.dtype)
        # Otherwise (long prompts, CUDA, no kernels) widen to the activations' dtype and scale the
        # outputs (gpt-fast's form, which torch.compile fuses into the matrix multiply on GPUs).
        y = F.linear(x, self.weight.to(x.dtype))
        if self.scale is not None:
            y = y * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.fmt}"
