"""Export to GGUF, the file format of llama.cpp (and of the engines built on it), written with the
``gguf`` package that llama.cpp maintains.

Two layouts, chosen by the model's shape (as for Hugging Face export, arlm/interop/hf.py):

* GPT-2 (learned positions, LayerNorm, GELU): llama.cpp's ``gpt2`` architecture, tensors ``token_embd``,
  ``position_embd``, ``blk.N.attn_qkv`` (arlm's fused c_attn as it is), ``attn_output``, ``ffn_up``,
  ``ffn_down``, the norms with their biases (zeros where the model has none), ``output_norm``, and
  ``output`` unless tied to the embedding.
* Llama (RoPE, RMSNorm, gated SiLU MLP): the ``llama`` architecture with separate ``attn_q/k/v`` and
  ``ffn_gate/up/down``. llama.cpp's llama rotates interleaved channel pairs, arlm (like Hugging Face)
  rotates the two halves of each head, so the q and k rows are permuted as llama.cpp's own
  convert_hf_to_gguf.py does (``_permute_qk``).

Weights are stored as F32, F16, or llama.cpp's block formats Q8_0 (32 int8 and one float16 scale) and
Q4_0 (32 4-bit codes and one float16 scale), quantized by ``gguf.quants``; norms, biases and position
embeddings stay F32, and a matrix whose rows are not a multiple of 32 stays F16/F32. The tokenizer goes
in as llama.cpp's byte-level BPE (``tokenizer.ggml.model = gpt2``): a BPE tokenizer's vocabulary and
merges as they are, a character tokenizer as one token per character (multi-byte characters joined by
merges), the end-of-text token as a control token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from arlm.config import GPTConfig
from arlm.errors import UserError
from arlm.interop.hf import hf_layout, hf_tokenizer
from arlm.io.atomic import atomic_file

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32  # values per Q8_0 / Q4_0 block


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the gguf package: pip install gguf") from None
    return gguf


def gguf_layout(cfg: GPTConfig) -> str:
    """gpt2 or llama (llama.cpp's architecture names), or a UserError naming what neither expresses."""
    layout = hf_layout(cfg, "GGUF (llama.cpp)")  # the same shape rules as Hugging Face's GPT-2 / Llama
    if layout == "mistral":
        raise UserError("sliding-window attention is not written to GGUF by arlm; export without --sliding-window")
    if layout == "gpt2" and cfg.activation != "gelu_tanh":
        raise UserError(f"llama.cpp's gpt2 uses the tanh GELU; this model's activation is {cfg.activation}")
    if layout == "llama" and (cfg.rope_scaling == "llama3" or cfg.activation != "silu"):
        raise UserError("llama.cpp's llama layout needs a SiLU-gated MLP and no llama3 RoPE scaling")
    return layout


def _permute_qk(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q or k projection from "rotate halves" to llama.cpp's interleaved pairs (convert_hf_to_gguf's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gpt2_tensors(model) -> dict[str, torch.Tensor]:
    cfg, sd = model.config, model.state_dict()
    out = {"token_embd.weight": sd["transformer.wte.weight"], "position_embd.weight": sd["transformer.wpe.weight"]}
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for ours, theirs in names.items():
            w = sd[f"transformer.h.{i}.{ours}.weight"]
            out[f"blk.{i}.{theirs}.weight"] = w
            out[f"blk.{i}.{theirs}.bias"] = sd.get(f"transformer.h.{i}.{ours}.bias", torch.zeros(w.shape[0]))
    out["output_norm.weight"] = sd["transformer.ln_f.weight"]
    out["output_norm.bias"] = sd.get("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def llama_tensors(model) -> dict[str, torch.Tensor]:
    cfg, sd = model.config, model.state_dict()
    out = {"token_embd.weight": sd["transformer.wte.weight"]}
    nh, nkv, hs, H = cfg.n_head, cfg.kv_heads, cfg.hs, cfg.hidden_size
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        q, k, v = sd[p + "attn.c_attn.weight"].split([nh * hs, nkv * hs, nkv * hs])
        out.update({f"blk.{i}.attn_norm.weight": sd[p + "ln_1.weight"], f"blk.{i}.attn_q.weight": _permute_qk(q, nh),
                    f"blk.{i}.attn_k.weight": _permute_qk(k, nkv), f"blk.{i}.attn_v.weight": v,
                    f"blk.{i}.attn_output.weight": sd[p + "attn.c_proj.weight"],
                    f"blk.{i}.ffn_norm.weight": sd[p + "ln_2.weight"],
                    f"blk.{i}.ffn_gate.weight": sd[p + "mlp.c_fc.weight"][:H],
                    f"blk.{i}.ffn_up.weight": sd[p + "mlp.c_fc.weight"][H:],
                    f"blk.{i}.ffn_down.weight": sd[p + "mlp.c_proj.weight"]})
        if p + "attn.c_attn.bias" in sd:
            bq, bk, bv = sd[p + "attn.c_attn.bias"].split([nh * hs, nkv * hs, nkv * hs])
            out.update({f"blk.{i}.attn_q.bias": _permute_qk(bq, nh), f"blk.{i}.attn_k.bias": _permute_qk(bk, nkv),
                        f"blk.{i}.attn_v.bias": bv})
        if p + "attn.c_proj.bias" in sd:
            out[f"blk.{i}.attn_output.bias"] = sd[p + "attn.c_proj.bias"]
        if p + "mlp.c_fc.bias" in sd:
            raise UserError("llama.cpp's llama layout has no MLP biases; this model has them (mlp_bias)")
    out["output_norm.weight"] = sd["transformer.ln_f.weight"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE's token alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tokenizer_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) in llama.cpp's byte-level BPE form, one token per model id."""
    gguf = _gguf()
    data = json.loads(hf_tokenizer(tokenizer).tok.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export writes byte-level BPE and character tokenizers; this one is {model.get('type')}")
    byte_level = any(p.get("type") == "ByteLevel" for p in _pretokenizers(data.get("pre_tokenizer")))
    to_unicode = _bytes_to_unicode()
    special = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
    for text, i in {**model["vocab"], **special}.items():
        if i >= vocab_size:
            continue
        if text in special:
            tokens[i], types[i] = text, gguf.TokenType.CONTROL
            continue
        if byte_level:
            tokens[i] = text
        else:  # a character tokenizer: the character's UTF-8 bytes, joined by merges when there are several
            pieces = [to_unicode[b] for b in text.encode("utf-8")]
            tokens[i] = "".join(pieces)
            merges += [f"{''.join(pieces[:k])} {pieces[k]}" for k in range(1, len(pieces))]
        types[i] = gguf.TokenType.NORMAL
    return tokens, [int(t) for t in types], merges


def _pretokenizers(pre) -> list[dict]:
    if not pre:
        return []
    return pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]


def _write_metadata(w, cfg: GPTConfig, layout: str, file_type) -> None:
    w.add_name("arlm export")
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.hidden_size)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_file_type(file_type)
    if layout == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
        return
    w.add_head_count_kv(cfg.kv_heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.hs)
    if cfg.hs * cfg.n_head != cfg.n_embd:
        w.add_key_length(cfg.hs)
        w.add_value_length(cfg.hs)
    if cfg.rope_scaling == "linear":
        from gguf import RopeScalingType

        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_factor)


def _tensor_data(name: str, t: torch.Tensor, dtype: str):
    """(numpy data, raw ggml type) of one tensor in ``dtype``; 1-D tensors and position embeddings F32."""
    gguf = _gguf()
    arr = t.detach().float().cpu().numpy()
    if arr.ndim == 1 or name == "position_embd.weight" or dtype == "f32":
        return arr, gguf.GGMLQuantizationType.F32
    if dtype == "f16" or arr.shape[-1] % BLOCK:
        return arr.astype(np.float16), gguf.GGMLQuantizationType.F16
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[dtype]
    return gguf.quants.quantize(arr, qtype), qtype


def export_gguf(model, tokenizer, out: str | Path, dtype: str = "f16", eos_ids: list[int] | None = None) -> dict:
    """Write ``model`` (a float arlm GPT) and ``tokenizer`` to the GGUF file ``out``, atomically; returns a summary."""
    gguf = _gguf()
    if dtype not in GGUF_TYPES:
        raise UserError(f"unknown GGUF type {dtype!r}; use one of {', '.join(GGUF_TYPES)}")
    cfg = model.config
    layout = gguf_layout(cfg)
    tensors = gpt2_tensors(model) if layout == "gpt2" else llama_tensors(model)
    tokens, types, merges = tokenizer_entries(tokenizer, cfg.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    eot = getattr(tokenizer, "eot_id", None)
    eos = (eos_ids or [])[:1] or ([eot] if eot is not None else [])
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), layout)
        _write_metadata(w, cfg, layout, file_type)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        # llama.cpp refuses a BPE vocabulary without the merges key, and the gguf writer refuses an empty list
        # (a character tokenizer of one-byte characters has no merges): then one merge that can never apply,
        # of two two-character symbols, which only merges could make
        w.add_token_merges(merges or ["ĠĠ ĠĠ"])
        if eos:
            w.add_eos_token_id(eos[0])
            w.add_bos_token_id(eos[0])
        w.add_add_bos_token(False)
        for name, t in tensors.items():
            data, qtype = _tensor_data(name, t, dtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"out": str(out), "layout": layout, "dtype": dtype, "tensors": len(tensors),
            "bytes": Path(out).stat().st_size}
