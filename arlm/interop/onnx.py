"""Export to ONNX with the KV cache as inputs and outputs, so ONNX Runtime (or any ONNX engine) decodes
step by step: a prompt is one call with an empty cache, each new token one call with the cache the
last call returned.

    inputs:  input_ids (B, T) int64; past_keys, past_values (n_layer, B, n_kv_head, P, head_dim) float32
    outputs: logits (B, T, vocab) float32; present_keys, present_values (n_layer, B, n_kv_head, P + T, head_dim)

B, T and P are dynamic. Token t of the call sits at position P + t and attends to the P cached
positions and to the new ones up to itself. The arlm model's in-place cache writes become
concatenations here (:class:`DecoderStep`); the blocks' layers, norms and rotary embedding are the
model's own modules and functions. Written with PyTorch's TorchScript-based exporter (opset 17),
which needs no extra package (PyTorch 2.9 made the torch.export-based exporter the default; it needs
onnxscript); the file is checked with ``onnx.checker``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from arlm.errors import UserError
from arlm.io.atomic import atomic_file
from arlm.model.layers import apply_rope, rope_cos_sin

OPSET = 17
INPUTS = ("input_ids", "past_keys", "past_values")
OUTPUTS = ("logits", "present_keys", "present_values")


def norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's norm; RMSNorm written out (Zhang & Sennrich 2019: x / sqrt(mean(x^2) + eps) * weight),
    which the TorchScript exporter has no ONNX translation for at opset 17."""
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return rms(x, eps) * module.weight
    return module(x)


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension, in operators opset 17 has."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class DecoderStep(nn.Module):
    """A GPT's forward pass over T new tokens given the keys and values of P earlier ones."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def attend(self, attn: nn.Module, x: torch.Tensor, rope, mask: torch.Tensor, past_k: torch.Tensor,
               past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.hs
        q, k, v = attn.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if attn.qk_norm:
            q, k = rms(q, attn.norm_eps), rms(k, attn.norm_eps)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = torch.cat([past_k, k], dim=2)  # (B, nkv, P + T, hs)
        v = torch.cat([past_v, v], dim=2)
        kk, vv = (k, v) if nkv == nh else (k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1))
        y = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return attn.c_proj(y), k, v

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor):
        m = self.model
        B, T = input_ids.shape
        P = past_keys.shape[3]
        positions = (torch.arange(T, device=input_ids.device) + P)[None]  # (1, T)
        keys = torch.arange(T, device=input_ids.device)[None, :] + P  # (1, T) absolute positions of the new keys
        # query t (at P + t) sees every cached key and the new keys at or before it: (T, P + T)
        mask = torch.cat([torch.ones(T, P, dtype=torch.bool, device=input_ids.device),
                          keys <= positions.transpose(0, 1)], dim=1)
        x = m.transformer.wte(input_ids)  # (B, T, C)
        rope = None
        if m.rope_inv_freq is not None:
            rope = rope_cos_sin(positions, m.rope_inv_freq)
        else:
            x = x + m.transformer.wpe(positions)
        present_k, present_v = [], []
        for i, block in enumerate(m.transformer.h):
            a, k, v = self.attend(block.attn, norm(block.ln_1, x), rope, mask, past_keys[i], past_values[i])
            x = x + a
            x = x + block.mlp(norm(block.ln_2, x))
            present_k.append(k)
            present_v.append(v)
        logits = m.head(norm(m.transformer.ln_f, x))  # (B, T, V), soft-capped if the model is
        return logits, torch.stack(present_k), torch.stack(present_v)


def empty_cache(model: nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Past keys and values of length 0, the first call's cache."""
    c = model.config
    shape = (c.n_layer, batch, c.kv_heads, 0, c.hs)
    return torch.zeros(shape), torch.zeros(shape)


def export_onnx(model: nn.Module, out: str | Path) -> dict:
    """Write ``model`` (a float arlm GPT, on CPU) as an ONNX file with its cache as inputs/outputs, atomically."""
    import onnx

    cfg = model.config
    if getattr(cfg, "type", "gpt") != "gpt":
        raise UserError(f"ONNX export writes GPT models; this is {cfg.kind} model")
    if cfg.sliding_window:
        raise UserError("sliding-window attention is not written to ONNX by arlm; export without it")
    if getattr(model, "quantization", None) is not None:
        raise UserError("ONNX export writes float models; export the model before quantizing it")
    step = DecoderStep(model.float().eval())
    ids = torch.zeros(1, 2, dtype=torch.long)
    past = tuple(torch.zeros(cfg.n_layer, 1, cfg.kv_heads, 3, cfg.hs) for _ in range(2))
    dynamic = {"input_ids": {0: "batch", 1: "new"}, "past_keys": {1: "batch", 3: "past"},
               "past_values": {1: "batch", 3: "past"}, "logits": {0: "batch", 1: "new"},
               "present_keys": {1: "batch", 3: "total"}, "present_values": {1: "batch", 3: "total"}}
    with atomic_file(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the tracer warns at every Python branch on a shape; each one here takes the same side for every
        # input (the CPU kernels are off while tracing: arlm/model/kernels), and the tests run other shapes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # PyTorch 2.9+ deprecates this exporter for the torch.export-based one, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(step, (ids, *past), str(tmp), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(str(tmp))
    return {"out": str(out), "opset": OPSET, "bytes": Path(out).stat().st_size, "n_layer": cfg.n_layer}
