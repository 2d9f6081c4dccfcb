"""Hugging Face interop for BERT: ``BertForMaskedLM`` folders run with arlm's own encoder
(arlm/model/encoder.py), and arlm encoders written back as ``BertForMaskedLM``.

The layouts differ in names only, except that arlm fuses each attention's query, key and value into
one matrix (concatenation one way, slicing the other: bit-exact both ways). The prediction head's
decoder is the word embedding unless the file holds a different one (``tie_word_embeddings``), and its
bias is ``cls.predictions.decoder.bias`` where the file has it (what the decoder adds; transformers
ties it to ``cls.predictions.bias``, which is read otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

from arlm.config import EncoderConfig, validated
from arlm.errors import UserError

BERT_TYPES = ("bert",)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _int(data: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}: config key {key!r} must be a positive integer, got {value!r}")
    return value


def bert_config_from_hf(data: dict[str, Any], where: str) -> EncoderConfig:
    """arlm's EncoderConfig of a BERT config.json, every key checked."""
    kind = data.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise UserError(f"{where}: position_embedding_type {kind!r} is not supported (absolute only)")
    act = data.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise UserError(f"{where}: hidden_act {act!r} is not supported ({', '.join(ACTIVATIONS)})")
    eps = data.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise UserError(f"{where}: layer_norm_eps must be a positive number, got {eps!r}")
    fields = dict(vocab_size=_int(data, "vocab_size", where), block_size=_int(data, "max_position_embeddings", where, 512),
                  n_layer=_int(data, "num_hidden_layers", where), n_embd=_int(data, "hidden_size", where),
                  n_head=_int(data, "num_attention_heads", where),
                  intermediate_size=_int(data, "intermediate_size", where),
                  type_vocab_size=_int(data, "type_vocab_size", where, 2), activation=ACTIVATIONS[act],
                  norm_eps=float(eps), tie_embeddings=data.get("tie_word_embeddings", True) is not False, dropout=0.0)
    return validated(EncoderConfig, fields, where)


def ties_output(sd: dict[str, torch.Tensor]) -> bool:
    """Whether the file's prediction decoder is the word embedding (absent, or equal to it)."""
    dec = sd.get("cls.predictions.decoder.weight")
    return dec is None or torch.equal(dec, sd.get("bert.embeddings.word_embeddings.weight", dec))


def arlm_state_from_hf(sd: dict[str, torch.Tensor], cfg: EncoderConfig, where: str) -> dict[str, torch.Tensor]:
    """arlm's state dict from a BertForMaskedLM one."""
    def pop(key: str) -> torch.Tensor:
        if key not in sd:
            raise UserError(f"{where}: the weights have no {key!r}; is this a BertForMaskedLM folder?")
        return sd.pop(key)

    sd = dict(sd)
    sd.pop("bert.embeddings.position_ids", None)
    out = {"transformer.wte.weight": pop("bert.embeddings.word_embeddings.weight"),
           "transformer.wpe.weight": pop("bert.embeddings.position_embeddings.weight"),
           "transformer.wtt.weight": pop("bert.embeddings.token_type_embeddings.weight")}
    for s in ("weight", "bias"):
        out[f"transformer.ln_emb.{s}"] = pop(f"bert.embeddings.LayerNorm.{s}")
        for i in range(cfg.n_layer):
            src, dst = f"bert.encoder.layer.{i}.", f"transformer.h.{i}."
            out[f"{dst}attn.c_attn.{s}"] = torch.cat([pop(f"{src}attention.self.{n}.{s}") for n in ("query", "key", "value")])
            out[f"{dst}attn.c_proj.{s}"] = pop(f"{src}attention.output.dense.{s}")
            out[f"{dst}ln_1.{s}"] = pop(f"{src}attention.output.LayerNorm.{s}")
            out[f"{dst}mlp.c_fc.{s}"] = pop(f"{src}intermediate.dense.{s}")
            out[f"{dst}mlp.c_proj.{s}"] = pop(f"{src}output.dense.{s}")
            out[f"{dst}ln_2.{s}"] = pop(f"{src}output.LayerNorm.{s}")
        out[f"mlm.dense.{s}"] = pop(f"cls.predictions.transform.dense.{s}")
        out[f"mlm.ln.{s}"] = pop(f"cls.predictions.transform.LayerNorm.{s}")
    bias = sd.pop("cls.predictions.bias", None)
    dec_bias = sd.pop("cls.predictions.decoder.bias", None)
    out["lm_head.bias"] = dec_bias if dec_bias is not None else bias  # the decoder's is the one its forward adds
    if out["lm_head.bias"] is None:
        raise UserError(f"{where}: the weights have no prediction bias ('cls.predictions.bias')")
    dec = sd.pop("cls.predictions.decoder.weight", None)
    out["lm_head.weight"] = out["transformer.wte.weight"] if cfg.tie_embeddings or dec is None else dec
    sd = {k: v for k, v in sd.items() if not k.startswith("bert.pooler.")}  # (BertModel's, unused by the MLM)
    if sd:
        raise UserError(f"{where}: the weights hold tensors a BertForMaskedLM has not: {', '.join(sorted(sd)[:5])}")
    return out


def hf_state_from_arlm(model) -> dict[str, torch.Tensor]:
    """A BertForMaskedLM state dict from arlm's encoder."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = model.config
    C = cfg.n_embd
    out = {"bert.embeddings.word_embeddings.weight": sd["transformer.wte.weight"],
           "bert.embeddings.position_embeddings.weight": sd["transformer.wpe.weight"],
           "bert.embeddings.token_type_embeddings.weight": sd["transformer.wtt.weight"],
           "cls.predictions.bias": sd["lm_head.bias"], "cls.predictions.decoder.bias": sd["lm_head.bias"].clone()}
    for s in ("weight", "bias"):
        out[f"bert.embeddings.LayerNorm.{s}"] = sd[f"transformer.ln_emb.{s}"]
        for i in range(cfg.n_layer):
            src, dst = f"transformer.h.{i}.", f"bert.encoder.layer.{i}."
            for n, part in zip(("query", "key", "value"), sd[f"{src}attn.c_attn.{s}"].split(C)):
                out[f"{dst}attention.self.{n}.{s}"] = part
            out[f"{dst}attention.output.dense.{s}"] = sd[f"{src}attn.c_proj.{s}"]
            out[f"{dst}attention.output.LayerNorm.{s}"] = sd[f"{src}ln_1.{s}"]
            out[f"{dst}intermediate.dense.{s}"] = sd[f"{src}mlp.c_fc.{s}"]
            out[f"{dst}output.dense.{s}"] = sd[f"{src}mlp.c_proj.{s}"]
            out[f"{dst}output.LayerNorm.{s}"] = sd[f"{src}ln_2.{s}"]
        out[f"cls.predictions.transform.dense.{s}"] = sd[f"mlm.dense.{s}"]
        out[f"cls.predictions.transform.LayerNorm.{s}"] = sd[f"mlm.ln.{s}"]
    if not cfg.tie_embeddings:
        out["cls.predictions.decoder.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_bert_config(cfg: EncoderConfig, pad_id: int | None) -> dict[str, Any]:
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.hidden_size, "hidden_act": HF_ACTIVATION[cfg.activation],
            "max_position_embeddings": cfg.block_size, "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps, "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "position_embedding_type": "absolute", "tie_word_embeddings": cfg.tie_embeddings,
            "pad_token_id": 0 if pad_id is None else pad_id, "torch_dtype": "float32"}
