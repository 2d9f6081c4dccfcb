"""Hugging Face interop: run GPT-2 and Llama-family checkpoints with arlm's own model, and hand
arlm models back in a layout ``transformers`` loads with no custom code.

Reading needs only ``safetensors``/``torch``/``tokenizers``, not ``transformers``. Architectures:

==============  ==========================================================================
model_type      examples
==============  ==========================================================================
gpt2            GPT-2 (all sizes), distilgpt2, DialoGPT, CodeGPT
llama           Llama 2/3/3.1/3.2 (incl. llama3 RoPE scaling), TinyLlama, SmolLM/SmolLM2
mistral         Mistral 7B (sliding-window attention)
qwen2           Qwen2 / Qwen2.5 (q/k/v biases)
==============  ==========================================================================

Weight layouts differ in two ways. GPT-2 stores its projections as ``Conv1D`` (``x @ W`` with W of
shape (in, out)), so they are transposed into ``nn.Linear``'s (out, in). Llama stores q, k, v and
gate, up as separate matrices; arlm fuses them row-wise into one matmul (``c_attn``, ``c_fc``),
so converting is concatenation one way and slicing the other: bit-exact both ways.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models

from arlm.config import GPTConfig, to_dict
from arlm.errors import UserError
from arlm.fsutil import atomic_dir, read_json
from arlm.model.gpt import GPT
from arlm.model.weights import assign_weights, empty_model
from arlm.tokenizers import EOT, Tokenizer
from arlm.tokenizers.pretrained import PretrainedTokenizer

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SUPPORTED = ("gpt2", "llama", "mistral", "qwen2")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "silu": "silu", "swish": "silu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
# Generation defaults we understand, from generation_config.json into GenerateConfig names.
GENERATION_KEYS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
                   "no_repeat_ngram_size", "max_new_tokens")


def is_hf_dir(path: str | Path) -> bool:
    """A Hugging Face model folder: config.json with a ``model_type`` and not written by arlm."""
    f = Path(path) / CONFIG
    if not f.is_file():
        return False
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data and "arlm_version" not in data


# ----------------------------------------------------------------------------------------------
# config.json -> GPTConfig


def _rope_fields(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """RoPE settings from either layout: transformers 5's ``rope_parameters`` or 4's ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params = {**legacy, **params}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UserError(f"{where}: partial rotary embeddings are not supported")
    out: dict[str, Any] = dict(pos_embedding="rope", rope_theta=float(theta))
    if kind == "default":
        return out
    if kind == "linear":
        return dict(out, rope_scaling="linear", rope_factor=float(params["factor"]))
    if kind == "llama3":
        return dict(out, rope_scaling="llama3", rope_factor=float(params["factor"]),
                    rope_low_freq_factor=float(params["low_freq_factor"]),
                    rope_high_freq_factor=float(params["high_freq_factor"]),
                    rope_original_block_size=int(params["original_max_position_embeddings"]))
    raise UserError(f"{where}: RoPE scaling '{kind}' is not supported (supported: default, linear, llama3)")


def gpt_config_from_hf(hf: dict[str, Any], where: str = CONFIG) -> GPTConfig:
    """Our GPTConfig for a Hugging Face config.json; unsupported features are a UserError naming them."""
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise UserError(f"{where}: model_type '{mt}' is not supported; arlm loads {', '.join(SUPPORTED)}")
    try:
        if mt == "gpt2":
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
                if hf.get(flag):
                    raise UserError(f"{where}: GPT-2 option {flag}=true is not supported")
            if not hf.get("scale_attn_weights", True):
                raise UserError(f"{where}: GPT-2 option scale_attn_weights=false is not supported")
            act = hf.get("activation_function", "gelu_new")
            if act not in ACTIVATIONS:
                raise UserError(f"{where}: activation_function '{act}' is not supported ({', '.join(ACTIVATIONS)})")
            cfg = GPTConfig(
                vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", 1024), n_layer=hf["n_layer"],
                n_head=hf["n_head"], n_embd=hf["n_embd"], intermediate_size=hf.get("n_inner") or 0, dropout=0.0,
                bias=True, norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=ACTIVATIONS[act],
                tie_embeddings=hf.get("tie_word_embeddings", True),
            )
        else:
            act = hf.get("hidden_act", "silu")
            if act not in ACTIVATIONS:
                raise UserError(f"{where}: hidden_act '{act}' is not supported ({', '.join(ACTIVATIONS)})")
            n_head, n_embd = hf["num_attention_heads"], hf["hidden_size"]
            head_dim = hf.get("head_dim") or 0
            block = hf.get("max_position_embeddings", 2048)
            window = 0
            if mt == "mistral" and hf.get("sliding_window") and hf["sliding_window"] < block:
                window = int(hf["sliding_window"])  # every layer slides
            elif (mt == "qwen2" and hf.get("use_sliding_window") and hf.get("sliding_window")
                  and hf.get("max_window_layers", 0) < hf["num_hidden_layers"]):
                # Qwen2 slides only in its upper layers; capping the context at the window keeps
                # every attention pattern exactly the checkpoint's.
                log.info("%s: context capped at the sliding window of %d tokens", where, hf["sliding_window"])
                block = min(block, int(hf["sliding_window"]))
            cfg = GPTConfig(
                vocab_size=hf["vocab_size"], block_size=block, n_layer=hf["num_hidden_layers"], n_head=n_head,
                n_embd=n_embd, n_kv_head=hf.get("num_key_value_heads") or n_head,
                head_dim=0 if head_dim == n_embd // n_head and n_embd % n_head == 0 else head_dim,
                intermediate_size=hf["intermediate_size"], dropout=0.0, bias=False, qkv_bias=(mt == "qwen2"),
                attn_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)),
                norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="gated", activation=ACTIVATIONS[act],
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), sliding_window=window,
                **_rope_fields(hf, where),
            )
            if cfg.n_kv_head == cfg.n_head:
                cfg.n_kv_head = 0
    except KeyError as e:
        raise UserError(f"{where}: required key {e} is missing") from None
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------------------
# weights


def read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors, sharded safetensors with an index, or
    pytorch_model.bin (read with ``weights_only=True``: no code in the pickle is run)."""
    def safetensors_file(f: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{f} is damaged or truncated ({e})") from None

    def torch_file(f: Path) -> dict[str, torch.Tensor]:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # damaged zip/pickle, or a pickle that needs code
            raise UserError(f"{f} cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None

    for index_name, reader in (("model.safetensors.index.json", safetensors_file),
                               ("pytorch_model.bin.index.json", torch_file)):
        if (d / index_name).is_file():
            index = read_json(d / index_name, "re-download the checkpoint")
            sd: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index.get("weight_map", {}).values())):
                if not (d / shard).is_file():
                    raise UserError(f"{d}: shard {shard} named in {index_name} is missing")
                sd.update(reader(d / shard))
            return sd
    if (d / "model.safetensors").is_file():
        return safetensors_file(d / "model.safetensors")
    if (d / "pytorch_model.bin").is_file():
        return torch_file(d / "pytorch_model.bin")
    raise UserError(f"{d} has no weights (model.safetensors, sharded *.safetensors with an index, or pytorch_model.bin)")


def _pop(sd: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"{where}: weight '{key}' is missing")
    return sd.pop(key)


def arlm_state_from_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig, model_type: str, where: str) -> dict[str, torch.Tensor]:
    """Rename (and for GPT-2 transpose, for Llama fuse) Hugging Face tensors into our state dict."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    qkv_bias = cfg.bias or cfg.qkv_bias or cfg.attn_bias
    o_bias, mlp_bias = cfg.bias or cfg.attn_bias, cfg.bias or cfg.mlp_bias
    if model_type == "gpt2":
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not re.fullmatch(r"h\.\d+\.attn\.(masked_)?bias", k)}  # old buffers
        out["transformer.wte.weight"] = _pop(sd, "wte.weight", where)
        out["transformer.wpe.weight"] = _pop(sd, "wpe.weight", where)
        for i in range(cfg.n_layer):
            src, dst = f"h.{i}.", f"transformer.h.{i}."
            for name in ("ln_1", "ln_2"):
                for p in ("weight", "bias"):
                    out[f"{dst}{name}.{p}"] = _pop(sd, f"{src}{name}.{p}", where)
            for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                out[f"{dst}{name}.weight"] = _pop(sd, f"{src}{name}.weight", where).t().contiguous()  # Conv1D
                out[f"{dst}{name}.bias"] = _pop(sd, f"{src}{name}.bias", where)
        for p in ("weight", "bias"):
            out[f"transformer.ln_f.{p}"] = _pop(sd, f"ln_f.{p}", where)
    else:
        sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # old buffers
        out["transformer.wte.weight"] = _pop(sd, "model.embed_tokens.weight", where)
        for i in range(cfg.n_layer):
            src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
            out[f"{dst}ln_1.weight"] = _pop(sd, f"{src}input_layernorm.weight", where)
            out[f"{dst}ln_2.weight"] = _pop(sd, f"{src}post_attention_layernorm.weight", where)
            qkv = [f"{src}self_attn.{n}_proj" for n in "qkv"]
            out[f"{dst}attn.c_attn.weight"] = torch.cat([_pop(sd, f"{n}.weight", where) for n in qkv])
            if qkv_bias:
                out[f"{dst}attn.c_attn.bias"] = torch.cat([_pop(sd, f"{n}.bias", where) for n in qkv])
            out[f"{dst}attn.c_proj.weight"] = _pop(sd, f"{src}self_attn.o_proj.weight", where)
            if o_bias:
                out[f"{dst}attn.c_proj.bias"] = _pop(sd, f"{src}self_attn.o_proj.bias", where)
            gate_up = [f"{src}mlp.gate_proj", f"{src}mlp.up_proj"]
            out[f"{dst}mlp.c_fc.weight"] = torch.cat([_pop(sd, f"{n}.weight", where) for n in gate_up])
            out[f"{dst}mlp.c_proj.weight"] = _pop(sd, f"{src}mlp.down_proj.weight", where)
            if mlp_bias:
                out[f"{dst}mlp.c_fc.bias"] = torch.cat([_pop(sd, f"{n}.bias", where) for n in gate_up])
                out[f"{dst}mlp.c_proj.bias"] = _pop(sd, f"{src}mlp.down_proj.bias", where)
        out["transformer.ln_f.weight"] = _pop(sd, "model.norm.weight", where)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # some checkpoints store the tied copy too
    else:
        out["lm_head.weight"] = _pop(sd, "lm_head.weight", where)
    if sd:
        extra = sorted(sd)
        raise UserError(f"{where}: unexpected weights {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} "
                        f"(an architecture variant arlm does not implement)")
    return out


def hf_state_from_arlm(model: GPT, layout: str) -> dict[str, torch.Tensor]:
    """Our weights in Hugging Face's GPT-2 or Llama naming (inverse of :func:`arlm_state_from_hf`)."""
    cfg = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    t = lambda x: x.t().contiguous()  # noqa: E731  nn.Linear (out, in) -> Conv1D (in, out)
    if layout == "gpt2":
        zeros = lambda n: torch.zeros(n, dtype=sd["transformer.wte.weight"].dtype)  # noqa: E731  bias-free models
        out["transformer.wte.weight"] = sd["transformer.wte.weight"]
        out["transformer.wpe.weight"] = sd["transformer.wpe.weight"]
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}."  # same names in both layouts
            for name in ("ln_1", "ln_2"):
                out[f"{h}{name}.weight"] = sd[f"{h}{name}.weight"]
                out[f"{h}{name}.bias"] = sd.get(f"{h}{name}.bias", zeros(cfg.n_embd))
            for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                w = sd[f"{h}{name}.weight"]
                out[f"{h}{name}.weight"] = t(w)
                out[f"{h}{name}.bias"] = sd.get(f"{h}{name}.bias", zeros(w.size(0)))
        out["transformer.ln_f.weight"] = sd["transformer.ln_f.weight"]
        out["transformer.ln_f.bias"] = sd.get("transformer.ln_f.bias", zeros(cfg.n_embd))
    else:
        nq, nkv = cfg.n_head * cfg.hs, cfg.kv_heads * cfg.hs
        out["model.embed_tokens.weight"] = sd["transformer.wte.weight"]
        for i in range(cfg.n_layer):
            src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
            out[f"{dst}input_layernorm.weight"] = sd[f"{src}ln_1.weight"]
            out[f"{dst}post_attention_layernorm.weight"] = sd[f"{src}ln_2.weight"]
            for suffix in ("weight", "bias"):
                fused = sd.get(f"{src}attn.c_attn.{suffix}")
                if fused is not None:
                    for n, part in zip("qkv", fused.split([nq, nkv, nkv])):
                        out[f"{dst}self_attn.{n}_proj.{suffix}"] = part.contiguous()
                if f"{src}attn.c_proj.{suffix}" in sd:
                    out[f"{dst}self_attn.o_proj.{suffix}"] = sd[f"{src}attn.c_proj.{suffix}"]
                elif suffix == "bias" and f"{src}attn.c_attn.bias" in sd:  # q/k/v biases only: o gets zeros
                    out[f"{dst}self_attn.o_proj.bias"] = torch.zeros(cfg.n_embd, dtype=sd[f"{src}attn.c_attn.bias"].dtype)
                fused = sd.get(f"{src}mlp.c_fc.{suffix}")
                if fused is not None:
                    gate, up = fused.chunk(2)
                    out[f"{dst}mlp.gate_proj.{suffix}"] = gate.contiguous()
                    out[f"{dst}mlp.up_proj.{suffix}"] = up.contiguous()
                if f"{src}mlp.c_proj.{suffix}" in sd:
                    out[f"{dst}mlp.down_proj.{suffix}"] = sd[f"{src}mlp.c_proj.{suffix}"]
        out["model.norm.weight"] = sd["transformer.ln_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# loading a Hugging Face folder


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def generation_defaults(gen: dict[str, Any]) -> dict[str, Any]:
    """The generation_config.json values we honour, as GenerateConfig options.

    Only values the file states are taken (transformers' implicit top_k=50 is not); do_sample=false
    means greedy decoding (temperature 0).
    """
    out: dict[str, Any] = {}
    for k in GENERATION_KEYS:
        if gen.get(k) is not None:
            out[k] = int(gen[k]) if k in ("top_k", "no_repeat_ngram_size", "max_new_tokens") else float(gen[k])
    if gen.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def hf_model_config(path: str | Path) -> GPTConfig:
    """The arlm model shape of a Hugging Face folder, from its config.json alone."""
    d = Path(path)
    return gpt_config_from_hf(read_json(d / CONFIG, "is this a Hugging Face model folder?"), str(d / CONFIG))


def load_hf(path: str | Path) -> tuple[GPT, Tokenizer | None, dict[str, Any]]:
    """(model in eval mode on CPU, tokenizer or None if the folder has none, info) from a Hugging Face model folder."""
    d = Path(path)
    hf = read_json(d / CONFIG, "is this a Hugging Face model folder?")
    cfg = gpt_config_from_hf(hf, str(d / CONFIG))
    gen = read_json(d / GENERATION_CONFIG, "fix or delete it") if (d / GENERATION_CONFIG).is_file() else {}
    eos = _eos_list(gen.get("eos_token_id", hf.get("eos_token_id")))
    bos = gen.get("bos_token_id", hf.get("bos_token_id"))
    if any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        tokenizer: PretrainedTokenizer | None = PretrainedTokenizer.from_dir(d, eos_id=eos[0] if eos else None, bos_id=bos)
    else:  # weights only: usable on token ids; text needs the tokenizer files
        log.debug("%s has no tokenizer files: the model works on token ids only", d)
        tokenizer = None
    model = empty_model(cfg)
    sd = arlm_state_from_hf(read_hf_weights(d), cfg, hf["model_type"], str(d))
    assign_weights(model, {k: v.float() for k, v in sd.items()}, f"{d}: weights do not match config.json")
    info = {
        "model_type": "gpt", "model": to_dict(cfg), "path": str(d), "source": {"format": "huggingface",
        "model_type": hf["model_type"], "path": str(d.resolve())},
        "generation": generation_defaults(gen),
        "eos_token_ids": eos or (_eos_list(tokenizer.eot_id) if tokenizer else []),
    }
    return model.eval(), tokenizer, info


# ----------------------------------------------------------------------------------------------
# writing a Hugging Face folder


def hf_layout(cfg: GPTConfig) -> str:
    """Which transformers architecture expresses ``cfg`` exactly: gpt2, llama, or mistral for a
    sliding-window model (else UserError).

    Missing biases are written as zeros (GPT-2 always has them; Llama's ``attention_bias`` covers
    q, k, v and o together), which computes the same function.
    """
    if cfg.type != "gpt":
        raise UserError(f"only GPT models export to Hugging Face format; this is an {cfg.type.upper()} model")
    if cfg.pos_embedding == "learned":
        problems = [what for bad, what in (
            (cfg.norm != "layernorm", "norm must be layernorm"),
            (cfg.mlp != "standard", "mlp must be standard"),
            (cfg.kv_heads != cfg.n_head, "n_kv_head must equal n_head"),
            (cfg.hs * cfg.n_head != cfg.n_embd, "head_dim must be n_embd / n_head"),
        ) if bad]
        if problems:
            raise UserError("this learned-position model cannot be written as GPT-2: " + "; ".join(problems))
        return "gpt2"
    problems = [what for bad, what in (
        (cfg.norm != "rmsnorm", "norm must be rmsnorm"),
        (cfg.mlp != "gated", "mlp must be gated (SwiGLU)"),
    ) if bad]
    if problems:
        raise UserError("this rotary-position model cannot be written as Llama: " + "; ".join(problems))
    if cfg.sliding_window:
        if cfg.bias or cfg.qkv_bias or cfg.attn_bias or cfg.mlp_bias:
            raise UserError("a sliding-window model is written as Mistral, which has no biases; train it with bias=false")
        return "mistral"
    # (Not Qwen2 for q/k/v-only biases: transformers 5 swaps in Qwen2's own pre-tokenizer for
    # model_type qwen2, which would change the ids of any other tokenizer.)
    return "llama"


def hf_config(cfg: GPTConfig, layout: str, bos_id: int | None, eos_id: int | list[int] | None) -> dict[str, Any]:
    """config.json for the layout chosen by :func:`hf_layout`."""
    common = dict(vocab_size=cfg.vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, use_cache=True,
                  tie_word_embeddings=cfg.tie_embeddings, initializer_range=0.02, dtype="float32")
    if layout == "gpt2":
        return dict(
            architectures=["GPT2LMHeadModel"], model_type="gpt2", n_positions=cfg.block_size, n_embd=cfg.n_embd,
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=None if cfg.hidden_size == 4 * cfg.n_embd else cfg.hidden_size,
            activation_function=HF_ACTIVATION[cfg.activation], layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, scale_attn_weights=True, **common,
        )
    rope: dict[str, Any] | None = None
    if cfg.rope_scaling == "linear":
        rope = {"rope_type": "linear", "factor": cfg.rope_factor}
    elif cfg.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "factor": cfg.rope_factor, "low_freq_factor": cfg.rope_low_freq_factor,
                "high_freq_factor": cfg.rope_high_freq_factor,
                "original_max_position_embeddings": cfg.rope_original_block_size}
    rotary = dict(
        hidden_size=cfg.n_embd, intermediate_size=cfg.hidden_size, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, head_dim=cfg.hs,
        hidden_act=HF_ACTIVATION[cfg.activation], max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
        attention_dropout=0.0,
        # The transformers-4 layout; transformers 5 reads it into its `rope_parameters`.
        rope_theta=cfg.rope_theta, rope_scaling=rope, **common,
    )
    if layout == "mistral":
        return dict(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=cfg.sliding_window,
                    **rotary)
    return dict(architectures=["LlamaForCausalLM"], model_type="llama",
                attention_bias=cfg.bias or cfg.attn_bias or cfg.qkv_bias, mlp_bias=cfg.bias or cfg.mlp_bias, **rotary)


def hf_tokenizer(tokenizer: Tokenizer) -> PretrainedTokenizer:
    """The same tokenizer as a Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json)."""
    if isinstance(tokenizer, PretrainedTokenizer):
        return tokenizer
    if tokenizer.kind == "char":
        # One token per character: a BPE model with no merges splits text into characters; the
        # Fuse decoder joins them back without the spaces a plain join would insert.
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        vocab[EOT] = tokenizer.eot_id
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.decoder = decoders.Fuse()
    elif tokenizer.kind == "bpe":
        tok = HFTokenizer.from_str(tokenizer.tok.to_str())
    else:
        raise UserError(f"cannot export a '{tokenizer.kind}' tokenizer")
    tok.add_special_tokens([EOT])
    # arlm treats a literal "<|endoftext|>" in text as text; split_special_tokens keeps that in transformers.
    return PretrainedTokenizer(tok, {"eos_token": EOT, "bos_token": EOT, "split_special_tokens": True})


def export_hf(model: GPT, tokenizer: Tokenizer, out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (atomically), loadable with
    ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``."""
    info = info or {}
    cfg = model.config
    layout = hf_layout(cfg)
    hf_tok = hf_tokenizer(tokenizer)
    if info.get("chat_template") and not hf_tok.config.get("chat_template"):  # the template it was fine-tuned with
        hf_tok = PretrainedTokenizer(hf_tok.tok, {**hf_tok.config, "chat_template": info["chat_template"]})
    eos_ids = info.get("eos_token_ids") or _eos_list(hf_tok.eot_id)
    eos: int | list[int] | None = (eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None
    bos = hf_tok.bos_id if hf_tok.bos_id is not None else (eos_ids[0] if eos_ids else None)
    gen: dict[str, Any] = {"bos_token_id": bos, "eos_token_id": eos, **(info.get("generation") or {})}
    if gen.get("temperature") == 0.0:  # arlm's greedy is transformers' do_sample=false
        del gen["temperature"]
        gen["do_sample"] = False
    elif "temperature" in gen:
        gen["do_sample"] = True
    with atomic_dir(out) as tmp:
        save_file(hf_state_from_arlm(model, layout), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(hf_config(cfg, layout, bos, eos), indent=2), encoding="utf-8")
        (tmp / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2), encoding="utf-8")
        hf_tok.save(tmp)
    return Path(out)
