"""Decode precision: float32, bfloat16, or weight-only int8 with one scale per output channel.

Decoding one token reads every weight once, so fewer bytes per weight means more tokens per second
(bench/decode.py measures it). ``quantize`` swaps each linear layer for a
:class:`arlm.model.layers.QuantizedLinear`; embeddings and norms stay float32 (one row of the
embedding is read per token, and norms are tiny). On CPU these layers run the kernels of
arlm/model/kernels, with or without ``--compile``, and the KV cache is kept in bfloat16 as well: the
one-query attention kernel reads it at half the bytes (int8 decoding of GPT-2-124M, 256 tokens: ~5%
faster, the same tokens). On CUDA, bfloat16 is the plain ``model.to(torch.bfloat16)``, and int8
weights are widened inside the matrix multiply.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from arlm.config import PRECISIONS
from arlm.errors import UserError
from arlm.model.gpt import GPT
from arlm.model.layers import QuantizedLinear

log = logging.getLogger(__name__)


def quantize(model: GPT, precision: str) -> GPT:
    """Convert ``model`` in place to ``precision`` (see module docstring) and return it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    device = next(model.parameters()).device
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if precision == "float32":
        return model.float()
    if precision == "bfloat16" and device.type != "cpu":
        return model.to(torch.bfloat16)
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, QuantizedLinear(child, precision).to(device))
                swapped += 1
    if device.type == "cpu":
        model.cache_dtype = torch.bfloat16
    log.debug("%s: %d linear layers quantized", precision, swapped)
    return model
