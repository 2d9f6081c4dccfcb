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

An encoder-decoder (T5, BART, Pegasus, Marian) is two graphs (:func:`export_onnx_seq2seq`): the encoder,
run once per source, which returns each decoder block's cross-attention keys and values, and the
decoder step above with those and the source's mask as further inputs:

    encoder: input_ids, attention_mask (B, S) int64 -> cross_keys, cross_values (n_layer, B, nh, S, hs)
    decoder: input_ids (B, T), attention_mask (B, S), past_keys, past_values (n_layer, B, nh, P, hs),
             cross_keys, cross_values -> logits (B, T, vocab), present_keys, present_values

the first decoder call takes the model's decoder start token and an empty cache (P = 0).
"""

from __future__ import annotations

import contextlib
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
ENCODER_INPUTS, ENCODER_OUTPUTS = ("input_ids", "attention_mask"), ("cross_keys", "cross_values")
SEQ2SEQ_INPUTS = ("input_ids", "attention_mask", "past_keys", "past_values", "cross_keys", "cross_values")


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


def export_onnx(model: nn.Module, out: str | Path, encoder_out: str | Path | None = None) -> dict:
    """Write ``model`` (a float arlm model, on CPU) as an ONNX file with its cache as inputs/outputs,
    atomically; an encoder-decoder's encoder goes to ``encoder_out`` (:func:`export_onnx_seq2seq`)."""
    cfg = model.config
    if getattr(model, "quantization", None) is not None:
        raise UserError("ONNX export writes float models; export the model before quantizing it")
    if getattr(model, "is_encoder_decoder", False):
        if encoder_out is None:
            raise UserError("an encoder-decoder is written as two ONNX files; name the encoder's too")
        return export_onnx_seq2seq(model, out, encoder_out)
    if getattr(cfg, "type", "gpt") != "gpt":
        raise UserError(f"ONNX export writes GPT and encoder-decoder models; this is {cfg.kind} model")
    if cfg.sliding_window:
        raise UserError("sliding-window attention is not written to ONNX by arlm; export without it")
    step = DecoderStep(model.float().eval())
    ids = torch.zeros(1, 2, dtype=torch.long)
    past = tuple(torch.zeros(cfg.n_layer, 1, cfg.kv_heads, 3, cfg.hs) for _ in range(2))
    dynamic = {"input_ids": {0: "batch", 1: "new"}, "past_keys": {1: "batch", 3: "past"},
               "past_values": {1: "batch", 3: "past"}, "logits": {0: "batch", 1: "new"},
               "present_keys": {1: "batch", 3: "total"}, "present_values": {1: "batch", 3: "total"}}
    with atomic_file(out) as tmp:
        _export(step, (ids, *past), tmp, INPUTS, OUTPUTS, dynamic)
    return {"out": str(out), "opset": OPSET, "bytes": Path(out).stat().st_size, "n_layer": cfg.n_layer}


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, dynamic: dict) -> None:
    """Trace ``module`` on ``args`` into ``path`` and check the file."""
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns at every Python branch on a shape; each one here takes the same side for every
        # input (the CPU kernels are off while tracing: arlm/model/kernels), and the tests run other shapes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # PyTorch 2.9+ deprecates this exporter for the torch.export-based one, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(str(path))


# -- encoder-decoders -----------------------------------------------------------------------------------


@contextlib.contextmanager
def exportable_norms(model: nn.Module):
    """Every RMSNorm of ``model`` computed with operators opset 17 has (:func:`norm`) while the block is
    traced, so that the model's own blocks can be traced as they are."""
    patched = [m for m in model.modules() if isinstance(m, nn.RMSNorm)]
    for m in patched:
        m.forward = lambda x, m=m: norm(m, x)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


class Seq2SeqEncoder(nn.Module):
    """The encoder over a padded batch of sources, returning what the decoder attends to: each decoder
    block's cross-attention keys and values of the encoder's output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        memory = self.model.encode(input_ids, attention_mask)  # (B, S, C)
        kv = self.model.memory_kv(memory)  # n_layer x 2 x (B, nh, S, hs)
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])


class Seq2SeqDecoderStep(nn.Module):
    """The decoder over T new target tokens given the keys and values of P earlier ones and the
    source's cross-attention keys and values; the model's blocks, with the cache concatenated."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @staticmethod
    def self_attention(attn: nn.Module, h: torch.Tensor, mask, past_k: torch.Tensor, past_v: torch.Tensor, present: list):
        B, T, _ = h.shape
        q, k, v = (attn.heads(t) for t in attn.c_attn(h).chunk(3, dim=-1))  # 3 x (B, nh, T, hs)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, nh, P + T, hs)
        present.append((k, v))
        y = attn.attend(q, k, v, mask).transpose(1, 2).reshape(B, T, attn.n_head * attn.hs)
        return attn.c_proj(y)

    def forward(self, input_ids, attention_mask, past_keys, past_values, cross_keys, cross_values):
        m, dec = self.model, self.model.decoder
        T, P = input_ids.shape[1], past_keys.shape[3]
        q_pos = (torch.arange(T, device=input_ids.device) + P)[None]  # (1, T) absolute target positions
        keys = torch.arange(P + T, device=input_ids.device)  # (K,) with K = P + T
        mask = dec.position_bias(q_pos, P + T, keys[None, :] <= q_pos[0][:, None])  # causal (T, K), or T5's bias
        memory_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        x = dec.embed(m.embed_tokens(input_ids), q_pos)  # (B, T, C)
        present: list = []
        for i, block in enumerate(dec.h):
            x = block.residual(x, block.ln_1, lambda h: self.self_attention(block.attn, h, mask, past_keys[i],
                                                                            past_values[i], present))
            x = block.residual(x, block.ln_x, lambda h: block.cross(h, memory_mask, (cross_keys[i], cross_values[i])))
            x = block.residual(x, block.ln_2, block.mlp)
        x = dec.ln_f(x) if dec.ln_f is not None else x
        return m.head(x), torch.stack([k for k, _ in present]), torch.stack([v for _, v in present])


def empty_seq2seq_cache(model: nn.Module, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """An encoder-decoder's past keys and values of length 0, the first decoder call's cache."""
    c = model.config
    shape = (c.decoder_layers, batch, c.n_head, 0, c.hs)
    return torch.zeros(shape), torch.zeros(shape)


def export_onnx_seq2seq(model: nn.Module, out: str | Path, encoder_out: str | Path) -> dict:
    """Write an encoder-decoder as two ONNX files: its decoder step to ``out`` and its encoder to
    ``encoder_out``, both or neither (a failure in either leaves no file)."""
    cfg = model.config
    model = model.float().eval()
    L, nh, hs = cfg.decoder_layers, cfg.n_head, cfg.hs
    src, mask = torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long)
    cross = tuple(torch.zeros(L, 2, nh, 5, hs) for _ in range(2))
    past = tuple(torch.zeros(L, 2, nh, 3, hs) for _ in range(2))
    source = {0: "batch", 1: "source"}
    cached = {1: "batch", 3: "source"}
    enc_dynamic = {"input_ids": source, "attention_mask": source, "cross_keys": cached, "cross_values": cached}
    dec_dynamic = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": source,
                   "past_keys": {1: "batch", 3: "past"}, "past_values": {1: "batch", 3: "past"},
                   "cross_keys": cached, "cross_values": cached, "logits": {0: "batch", 1: "new"},
                   "present_keys": {1: "batch", 3: "total"}, "present_values": {1: "batch", 3: "total"}}
    with atomic_file(encoder_out) as enc_tmp, atomic_file(out) as dec_tmp, exportable_norms(model):
        _export(Seq2SeqEncoder(model), (src, mask), enc_tmp, ENCODER_INPUTS, ENCODER_OUTPUTS, enc_dynamic)
        _export(Seq2SeqDecoderStep(model), (torch.ones(2, 2, dtype=torch.long), mask, *past, *cross), dec_tmp,
                SEQ2SEQ_INPUTS, OUTPUTS, dec_dynamic)
    return {"out": str(out), "encoder": str(encoder_out), "opset": OPSET,
            "bytes": Path(out).stat().st_size + Path(encoder_out).stat().st_size, "n_layer": cfg.n_layer,
            "n_decoder_layer": L, "decoder_start_token_id": cfg.decoder_start_token_id}
