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
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models

from arlm.config import GPTConfig, ModelConfig, validated
from arlm.errors import UserError
from arlm.interop import hf_bert, hf_heads, hf_seq2seq
from arlm.io.atomic import atomic_dir
from arlm.io.checkpoint import read_pickle, read_safetensors
from arlm.io.files import read_json
from arlm.io.schema import CheckpointInfo, HeadInfo, HFConfig, HFGenerationConfig, ShardIndex, token_ids
from arlm.model.gpt import GPT
from arlm.model.heads import TaskModel
from arlm.model.registry import empty_model
from arlm.model.weights import assign_weights, check_size
from arlm.tokenizers import EOT, Tokenizer
from arlm.tokenizers.pretrained import PretrainedTokenizer, special_token_text

log = logging.getLogger(__name__)

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SUPPORTED = ("gpt2", "llama", "mistral", "qwen2")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu", "silu": "silu", "swish": "silu", "relu2": "relu2"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "relu2": "relu2"}


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


def _rope_number(params: dict[str, Any], key: str, where: str, kind: type = float):
    value = params.get(key)
    if value is None:
        raise UserError(f"{where}: RoPE scaling needs '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)) \
            or not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: RoPE scaling '{key}' must be a positive {'integer' if kind is int else 'number'}, "
                        f"got {value!r}")
    return kind(value)


def _rope_fields(hf: HFConfig, where: str) -> dict[str, Any]:
    """RoPE settings from either layout: transformers 5's ``rope_parameters`` or 4's ``rope_theta`` + ``rope_scaling``."""
    params = {**(hf.rope_scaling or {}), **(hf.rope_parameters or {})}
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", hf.rope_theta if hf.rope_theta is not None else 10000.0)
    partial = params.get("partial_rotary_factor", hf.partial_rotary_factor)
    if partial is not None and partial != 1.0:
        raise UserError(f"{where}: partial rotary embeddings are not supported")
    out: dict[str, Any] = dict(pos_embedding="rope", rope_theta=_rope_number({"rope_theta": theta}, "rope_theta", where))
    if kind == "default":
        return out
    if kind == "linear":
        return dict(out, rope_scaling="linear", rope_factor=_rope_number(params, "factor", where))
    if kind == "llama3":
        return dict(out, rope_scaling="llama3", rope_factor=_rope_number(params, "factor", where),
                    rope_low_freq_factor=_rope_number(params, "low_freq_factor", where),
                    rope_high_freq_factor=_rope_number(params, "high_freq_factor", where),
                    rope_original_block_size=_rope_number(params, "original_max_position_embeddings", where, int))
    raise UserError(f"{where}: RoPE scaling {kind!r} is not supported (supported: default, linear, llama3)")


def _activation(name: str, key: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise UserError(f"{where}: {key} '{name}' is not supported ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _gpt2_config(hf: HFConfig, where: str) -> GPTConfig:
    hf.require(where, "vocab_size", "n_layer", "n_head", "n_embd")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
        if getattr(hf, flag):
            raise UserError(f"{where}: GPT-2 option {flag}=true is not supported")
    if not hf.scale_attn_weights:
        raise UserError(f"{where}: GPT-2 option scale_attn_weights=false is not supported")
    return GPTConfig(
        vocab_size=hf.vocab_size, block_size=hf.n_positions, n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd,
        intermediate_size=hf.n_inner or 0, dropout=0.0, bias=True, norm_eps=hf.layer_norm_epsilon,
        activation=_activation(hf.activation_function, "activation_function", where),
        tie_embeddings=True if hf.tie_word_embeddings is None else hf.tie_word_embeddings,
    )


def _llama_config(hf: HFConfig, mt: str, where: str) -> GPTConfig:
    hf.require(where, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    n_head, n_embd, layers = hf.num_attention_heads, hf.hidden_size, hf.num_hidden_layers
    head_dim = hf.head_dim or 0
    block, window = hf.max_position_embeddings, 0
    if mt == "mistral" and hf.sliding_window and hf.sliding_window < block:
        window = hf.sliding_window  # every layer slides
    elif mt == "qwen2" and hf.use_sliding_window and hf.sliding_window and hf.max_window_layers < layers:
        # Qwen2 slides only in its upper layers; capping the context at the window keeps every
        # attention pattern exactly the checkpoint's.
        log.info("%s: context capped at the sliding window of %d tokens", where, hf.sliding_window)
        block = min(block, hf.sliding_window)
    cfg = GPTConfig(
        vocab_size=hf.vocab_size, block_size=block, n_layer=layers, n_head=n_head, n_embd=n_embd,
        n_kv_head=hf.num_key_value_heads or n_head,
        head_dim=0 if head_dim == n_embd // n_head and n_embd % n_head == 0 else head_dim,
        intermediate_size=hf.intermediate_size, dropout=0.0, bias=False, qkv_bias=(mt == "qwen2"),
        attn_bias=hf.attention_bias, mlp_bias=hf.mlp_bias, norm="rmsnorm", norm_eps=hf.rms_norm_eps, mlp="gated",
        activation=_activation(hf.hidden_act, "hidden_act", where), tie_embeddings=bool(hf.tie_word_embeddings),
        sliding_window=window, **_rope_fields(hf, where),
    )
    if cfg.n_kv_head == cfg.n_head:
        cfg.n_kv_head = 0
    return cfg


def gpt_config_from_hf(data: dict[str, Any], where: str = CONFIG) -> GPTConfig:
    """Our GPTConfig for a Hugging Face config.json; a bad value or an unsupported feature is a
    UserError naming the file and the key, before any tensor is read."""
    hf = validated(HFConfig, data, where, unknown="ignore")
    mt = hf.model_type
    if mt not in SUPPORTED:
        raise UserError(f"{where}: model_type {mt!r} is not supported; arlm loads "
                        f"{', '.join(SUPPORTED + hf_seq2seq.SEQ2SEQ_TYPES + hf_bert.BERT_TYPES)}")
    cfg = _gpt2_config(hf, where) if mt == "gpt2" else _llama_config(hf, mt, where)
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------------
# weights


def read_hf_weights(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors, sharded safetensors with an index, or
    pytorch_model.bin (read with ``weights_only=True``: no code in the pickle is run)."""
    def torch_file(f: Path) -> dict[str, torch.Tensor]:
        sd = read_pickle(f, "weight files (convert them to safetensors where they came from)")
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
            raise UserError(f"{f} does not hold a table of named tensors")
        return sd

    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", torch_file)):
        if (d / index_name).is_file():
            source = str(d / index_name)
            index = validated(ShardIndex, read_json(d / index_name, "re-download the checkpoint"), source, unknown="ignore")
            sd: dict[str, torch.Tensor] = {}
            for shard in index.shards(d, source):
                if not shard.is_file():
                    raise UserError(f"{d}: shard {shard.name} named in {index_name} is missing")
                sd.update(reader(shard))
            return sd
    if (d / "model.safetensors").is_file():
        return read_safetensors(d / "model.safetensors")
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
    if not cfg.tie_embeddings and "lm_head.weight" in sd:  # (a task head's body has no output layer)
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# loading a Hugging Face folder


def model_config_from_hf(data: dict[str, Any], where: str, tie: bool | None = None) -> ModelConfig:
    """The arlm config of a config.json: an encoder-decoder's (``tie``: whether its weights share the
    output layer; None: as the config says) or a decoder-only model's."""
    if isinstance(data, dict) and data.get("model_type") in hf_bert.BERT_TYPES:
        return hf_bert.bert_config_from_hf(data, where)
    if isinstance(data, dict) and data.get("model_type") in hf_seq2seq.SEQ2SEQ_TYPES:
        return hf_seq2seq.seq2seq_config_from_hf(data, where, data.get("tie_word_embeddings") is not False
                                                 if tie is None else tie)
    return gpt_config_from_hf(data, where)


def hf_model_config(path: str | Path) -> ModelConfig:
    """The arlm model shape of a Hugging Face folder, from its config.json alone."""
    d = Path(path)
    return model_config_from_hf(read_json(d / CONFIG, "is this a Hugging Face model folder?"), str(d / CONFIG))


def load_hf(path: str | Path) -> tuple[torch.nn.Module, Tokenizer | None, CheckpointInfo]:
    """(model in eval mode on CPU, tokenizer or None if the folder has none, info) from a Hugging Face model folder."""
    d = Path(path)
    data = read_json(d / CONFIG, "is this a Hugging Face model folder?")
    cfg = model_config_from_hf(data, str(d / CONFIG))  # every key checked before a tensor is read
    eos = token_ids(data.get("eos_token_id"), f"config key 'eos_token_id' in {d / CONFIG}")
    bos = token_ids(data.get("bos_token_id"), f"config key 'bos_token_id' in {d / CONFIG}")
    decoding: dict[str, Any] = {}
    if (d / GENERATION_CONFIG).is_file():
        source = str(d / GENERATION_CONFIG)
        gen = validated(HFGenerationConfig, read_json(d / GENERATION_CONFIG, "fix or delete it"), source, unknown="ignore")
        decoding = gen.decoding(source, seq2seq=cfg.type == "seq2seq")
        if cfg.type == "seq2seq" and gen.decoder_start_token_id is not None:
            cfg.decoder_start_token_id = gen.decoder_start_token_id
        eos = token_ids(gen.eos_token_id, f"config key 'eos_token_id' in {source}") or eos
        bos = token_ids(gen.bos_token_id, f"config key 'bos_token_id' in {source}") or bos
    bad = [i for i in eos + bos + ([cfg.decoder_start_token_id] if cfg.type == "seq2seq" else [])
           if i >= cfg.vocab_size]
    if bad:
        raise UserError(f"{d}: special token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
    if any((d / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")):
        tokenizer: PretrainedTokenizer | None = PretrainedTokenizer.from_dir(d, eos_id=eos[0] if eos else None,
                                                                            bos_id=bos[0] if bos else None)
    else:  # weights only: usable on token ids; text needs the tokenizer files
        log.debug("%s has no tokenizer files: the model works on token ids only", d)
        tokenizer = None
    seq2seq = data["model_type"] in hf_seq2seq.SEQ2SEQ_TYPES
    bert = data["model_type"] in hf_bert.BERT_TYPES
    spec = None if seq2seq or bert else hf_heads.head_spec(data, str(d / CONFIG))
    head = None
    if spec is not None:  # a task head in place of the output layer: the body has none to read
        head = HeadInfo(spec.task, hf_heads.labels_from_hf(data, spec, str(d / CONFIG)))
        cfg.tie_embeddings = True
        try:
            head.validate()
        except UserError as e:
            raise UserError(f"{d / CONFIG}: {e}") from None
    raw = read_hf_weights(d)
    if spec is not None:
        raw, head_sd = hf_heads.split_state(raw, spec, data["model_type"], str(d))
    if seq2seq:
        cfg.tie_embeddings = hf_seq2seq.ties_output(raw, data["model_type"])
    if bert:
        cfg.tie_embeddings = hf_bert.ties_output(raw)
        raw = {k: v for k, v in raw.items() if not k.startswith("bert.pooler.") and k != "bert.embeddings.position_ids"}
    check_size(cfg, raw, str(d / CONFIG))
    model = empty_model(cfg)
    if bert:
        sd = hf_bert.arlm_state_from_hf(raw, cfg, str(d))
    else:
        sd = (hf_seq2seq.arlm_state_from_hf if seq2seq else arlm_state_from_hf)(raw, cfg, data["model_type"], str(d))
    if head is not None:
        model = TaskModel(model, head.task, head.labels)
        sd = {**{f"body.{k}": v for k, v in sd.items() if not k.startswith("lm_head.")}, **head_sd}
    assign_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, str(d))
    info = CheckpointInfo(model=cfg, model_type=cfg.type, generation=decoding, head=head,
                          eos_token_ids=eos or ([tokenizer.eot_id] if tokenizer and tokenizer.eot_id is not None else []),
                          source={"format": "huggingface", "model_type": data["model_type"], "path": str(d.resolve())})
    info.path = str(d)
    info.generation_source = str(d / GENERATION_CONFIG)
    return model.eval(), tokenizer, info


# ----------------------------------------------------------------------------------------------
# writing a Hugging Face folder


def hf_layout(cfg: GPTConfig, target: str = "Hugging Face format") -> str:
    """Which transformers architecture expresses ``cfg`` exactly: gpt2, llama, or mistral for a
    sliding-window model (else UserError naming ``target``, the format being written).

    Missing biases are written as zeros (GPT-2 always has them; Llama's ``attention_bias`` covers
    q, k, v and o together), which computes the same function.
    """
    if not isinstance(cfg, GPTConfig):  # the layouts below are a GPT's weights
        raise UserError(f"only GPT models export to {target}; this is {cfg.kind} model")
    missing = [what for on, what in ((cfg.qk_norm, "query/key normalisation (model.qk_norm)"),
                                     (cfg.logit_softcap, "logit soft-capping (model.logit_softcap)")) if on]
    if missing:
        raise UserError(f"GPT-2 and Llama have no {' or '.join(missing)}: this model cannot be written in their "
                        f"layout; export it with --format onnx")
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


def export_hf(model: GPT, tokenizer: Tokenizer, out: str | Path, info: CheckpointInfo | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder (atomically), loadable with
    ``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``."""
    info = info or CheckpointInfo(model=model.config)
    cfg = model.config
    seq2seq = cfg.type == "seq2seq"
    layout = "bert" if cfg.type == "encoder" else hf_seq2seq.hf_family(cfg) if seq2seq else hf_layout(cfg)
    hf_tok = hf_tokenizer(tokenizer)
    if info.chat_template and not hf_tok.config.get("chat_template"):  # the template it was fine-tuned with
        hf_tok = PretrainedTokenizer(hf_tok.tok, {**hf_tok.config, "chat_template": info.chat_template})
    eos_ids = info.eos_token_ids or ([hf_tok.eot_id] if hf_tok.eot_id is not None else [])
    eos: int | list[int] | None = (eos_ids[0] if len(eos_ids) == 1 else eos_ids) if eos_ids else None
    bos = hf_tok.bos_id if hf_tok.bos_id is not None else (eos_ids[0] if eos_ids else None)
    gen: dict[str, Any] = {"bos_token_id": bos, "eos_token_id": eos, **info.generation}
    if gen.get("temperature") == 0.0:  # arlm's greedy is transformers' do_sample=false
        del gen["temperature"]
        gen["do_sample"] = False
    elif "temperature" in gen:
        gen["do_sample"] = True
    if cfg.type == "encoder":  # BertForMaskedLM
        pad = hf_tok.tok.token_to_id(special_token_text(hf_tok.config.get("pad_token")) or "[PAD]")
        weights, config = hf_bert.hf_state_from_arlm(model), hf_bert.hf_bert_config(cfg, pad)
        gen = {}
    elif seq2seq:
        gen["decoder_start_token_id"] = cfg.decoder_start_token_id
        pad = hf_tok.tok.token_to_id(special_token_text(hf_tok.config.get("pad_token")) or "")
        pad = cfg.decoder_start_token_id if pad is None else pad
        family = "t5" if layout == "T5" else layout
        weights = hf_seq2seq.hf_state_from_arlm(model, family)
        config = hf_seq2seq.hf_seq2seq_config(cfg, layout, pad, None if bos == eos else bos, eos)
    elif isinstance(model, TaskModel):  # GPT2ForSequenceClassification, LlamaForTokenClassification, ...
        head = {f"score.{k}": v.detach().cpu() for k, v in model.score.state_dict().items()}
        weights = hf_heads.hf_head_state(hf_state_from_arlm(model.body, layout), head, model.task, layout)
        # transformers finds a text's last token as the last one that is not padding: padding is end-of-text,
        # as its GPT-2 examples set it
        config = {**hf_config(cfg, layout, bos, eos), **hf_heads.hf_head_config(model.task, model.labels, layout),
                  "pad_token_id": eos_ids[0] if eos_ids else None}
    else:
        weights, config = hf_state_from_arlm(model, layout), hf_config(cfg, layout, bos, eos)
    with atomic_dir(out) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        if gen:
            (tmp / GENERATION_CONFIG).write_text(json.dumps(gen, indent=2), encoding="utf-8")
        hf_tok.save(tmp)
    return Path(out)
