"""Hugging Face interop for encoder-decoders: T5/MT5/Flan-T5, BART, mBART, Pegasus and Marian folders
run with arlm's own model (arlm/model/seq2seq.py), and arlm encoder-decoders written back in the
layout of the family their config matches.

==============  ===========================================================================
model_type      examples
==============  ===========================================================================
t5, mt5         t5-small/base (1.0), google/t5-v1_1-*, google/flan-t5-*, google/mt5-*
bart            facebook/bart-base/large, facebook/bart-large-cnn, distilbart
mbart           facebook/mbart-large-50 (and -many-to-many)
pegasus         google/pegasus-xsum, google/pegasus-cnn_dailymail
marian          Helsinki-NLP/opus-mt-*
==============  ===========================================================================

The layouts differ from ours in names only, except that arlm fuses each self-attention's q, k, v
into one matrix and each cross-attention's k, v into another (concatenation one way, slicing the
other: bit-exact both ways). Fixed sinusoidal position tables, which some files carry, are computed
rather than read. Two rules follow transformers 5: T5's output layer is the embedding unless the
file holds a different ``lm_head.weight``, and T5 scales the decoder's output by d_model^-0.5 when
``scale_decoder_outputs`` says so (default: unless ``tie_word_embeddings`` is false).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from arlm.config import Seq2SeqConfig, validated
from arlm.errors import UserError
from arlm.io.schema import HFSeq2SeqConfig
from arlm.model.seq2seq import sinusoids

T5_TYPES = ("t5", "mt5")
BART_TYPES = ("bart", "mbart", "pegasus", "marian")
SEQ2SEQ_TYPES = T5_TYPES + BART_TYPES
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "silu": "silu", "swish": "silu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "swish"}
# Per BART-family model: positions, pre-norm, layernorm_embedding, final norms (transformers' modeling files).
BART_SHAPES = {
    "bart": dict(pos_embedding="learned", post_norm=True, embedding_norm=True, final_norm=False),
    "mbart": dict(pos_embedding="learned", post_norm=False, embedding_norm=True, final_norm=True),
    "pegasus": dict(pos_embedding="sinusoidal", post_norm=False, embedding_norm=False, final_norm=True),
    "marian": dict(pos_embedding="sinusoidal", post_norm=True, embedding_norm=False, final_norm=False),
}
DEFAULT_POSITIONS = 512  # T5 has no position limit of its own; its papers trained on 512 tokens


def _activation(name: str, key: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise UserError(f"{where}: {key} '{name}' is not supported ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _t5_config(hf: HFSeq2SeqConfig, mt: str, where: str) -> dict[str, Any]:
    hf.require(where, "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    parts = hf.feed_forward_proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise UserError(f"{where}: feed_forward_proj '{hf.feed_forward_proj}' is not ACT or gated-ACT")
    act = "gelu_new" if hf.feed_forward_proj == "gated-gelu" else parts[-1]  # transformers' rule
    scale = hf.scale_decoder_outputs if hf.scale_decoder_outputs is not None else hf.tie_word_embeddings is not False
    if mt == "mt5":  # transformers' MT5 never rescales (mT5 is T5 1.1, untied)
        scale = False
    block = hf.n_positions or DEFAULT_POSITIONS
    pad = hf.pad_token_id if hf.pad_token_id is not None else 0
    return dict(
        block_size=block, max_source_len=block, n_layer=hf.num_layers, n_decoder_layer=hf.num_decoder_layers or 0,
        n_embd=hf.d_model, n_head=hf.num_heads, head_dim=hf.d_kv, intermediate_size=hf.d_ff,
        pos_embedding="relative", relative_buckets=hf.relative_attention_num_buckets,
        relative_max_distance=hf.relative_attention_max_distance, norm="rmsnorm", norm_eps=hf.layer_norm_epsilon,
        post_norm=False, embedding_norm=False, final_norm=True, bias=False,
        mlp="gated" if parts[0] == "gated" else "standard", activation=_activation(act, "feed_forward_proj", where),
        scale_embedding=False, scale_attention=False, scale_decoder_output=scale, logits_bias=False,
        decoder_start_token_id=hf.decoder_start_token_id if hf.decoder_start_token_id is not None else pad,
    )


def _bart_config(hf: HFSeq2SeqConfig, mt: str, where: str) -> dict[str, Any]:
    hf.require(where, "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
               "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(hf, a) != getattr(hf, b):
            raise UserError(f"{where}: {a} ({getattr(hf, a)}) differs from {b} ({getattr(hf, b)}); arlm's "
                            f"encoder-decoder has one value for both")
    if hf.d_model % hf.encoder_attention_heads:
        raise UserError(f"{where}: d_model ({hf.d_model}) is not divisible by encoder_attention_heads "
                        f"({hf.encoder_attention_heads})")
    if mt == "marian" and (not hf.share_encoder_decoder_embeddings
                           or (hf.decoder_vocab_size or hf.vocab_size) != hf.vocab_size):
        raise UserError(f"{where}: Marian models with separate source and target vocabularies "
                        f"(share_encoder_decoder_embeddings=false or decoder_vocab_size != vocab_size) are not supported")
    pad = hf.pad_token_id if hf.pad_token_id is not None else 1
    start = hf.decoder_start_token_id
    if start is None:  # as transformers' generate: the BOS token, else the pad token
        bos = hf.bos_token_id[0] if isinstance(hf.bos_token_id, list) and hf.bos_token_id else hf.bos_token_id
        start = bos if isinstance(bos, int) else pad
    return dict(
        block_size=hf.max_position_embeddings, max_source_len=hf.max_position_embeddings, n_layer=hf.encoder_layers,
        n_decoder_layer=hf.decoder_layers, n_embd=hf.d_model, n_head=hf.encoder_attention_heads,
        intermediate_size=hf.encoder_ffn_dim, norm="layernorm", norm_eps=1e-5, bias=True, mlp="standard",
        activation=_activation(hf.activation_function, "activation_function", where),
        scale_embedding=hf.scale_embedding, scale_attention=True, scale_decoder_output=False, logits_bias=True,
        decoder_start_token_id=start, **BART_SHAPES[mt],
    )


def seq2seq_config_from_hf(data: dict[str, Any], where: str, tie: bool = True) -> Seq2SeqConfig:
    """Our Seq2SeqConfig for an encoder-decoder's config.json (``tie``: whether the weights share the
    output layer with the embedding); a bad value or an unsupported variant is a UserError naming the
    file and the key, before any tensor is read."""
    hf = validated(HFSeq2SeqConfig, data, where, unknown="ignore")
    mt = hf.model_type
    fields = _t5_config(hf, mt, where) if mt in T5_TYPES else _bart_config(hf, mt, where)
    cfg = Seq2SeqConfig(vocab_size=hf.vocab_size, dropout=0.0, tie_embeddings=tie, **fields)
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return cfg


# ----------------------------------------------------------------------------------------------
# weights


def _pop(sd: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise UserError(f"{where}: weight '{key}' is missing")
    return sd.pop(key)


def embedding_key(sd: dict[str, torch.Tensor], model_type: str) -> str:
    return "shared.weight" if model_type in T5_TYPES else "model.shared.weight"


def ties_output(sd: dict[str, torch.Tensor], model_type: str) -> bool:
    """The output layer is the embedding: the file has no other ``lm_head.weight`` (transformers 5's rule)."""
    head, emb = sd.get("lm_head.weight"), sd.get(embedding_key(sd, model_type))
    return head is None or emb is None or (head.shape == emb.shape and torch.equal(head, emb))


def _t5_layer_map(stack: str, i: int, decoder: bool, gated: bool) -> list[tuple[str, list[str]]]:
    """(our name, [their names, concatenated]) for block ``i`` of T5's ``stack``."""
    src, dst = f"{stack}.block.{i}.layer.", f"{stack}.h.{i}."
    ff = 2 if decoder else 1
    out = [(f"{dst}ln_1.weight", [f"{src}0.layer_norm.weight"]),
           (f"{dst}attn.c_attn.weight", [f"{src}0.SelfAttention.{n}.weight" for n in "qkv"]),
           (f"{dst}attn.c_proj.weight", [f"{src}0.SelfAttention.o.weight"]),
           (f"{dst}ln_2.weight", [f"{src}{ff}.layer_norm.weight"]),
           (f"{dst}mlp.c_fc.weight", [f"{src}{ff}.DenseReluDense.wi_0.weight", f"{src}{ff}.DenseReluDense.wi_1.weight"]
            if gated else [f"{src}{ff}.DenseReluDense.wi.weight"]),
           (f"{dst}mlp.c_proj.weight", [f"{src}{ff}.DenseReluDense.wo.weight"])]
    if decoder:
        out += [(f"{dst}ln_x.weight", [f"{src}1.layer_norm.weight"]),
                (f"{dst}cross.q.weight", [f"{src}1.EncDecAttention.q.weight"]),
                (f"{dst}cross.c_kv.weight", [f"{src}1.EncDecAttention.{n}.weight" for n in "kv"]),
                (f"{dst}cross.c_proj.weight", [f"{src}1.EncDecAttention.o.weight"])]
    return out


def _bart_layer_map(stack: str, i: int, decoder: bool) -> list[tuple[str, list[str]]]:
    src, dst = f"model.{stack}.layers.{i}.", f"{stack}.h.{i}."
    pairs = [("ln_1", ["self_attn_layer_norm"]), ("attn.c_attn", [f"self_attn.{n}_proj" for n in "qkv"]),
             ("attn.c_proj", ["self_attn.out_proj"]), ("ln_2", ["final_layer_norm"]), ("mlp.c_fc", ["fc1"]),
             ("mlp.c_proj", ["fc2"])]
    if decoder:
        pairs += [("ln_x", ["encoder_attn_layer_norm"]), ("cross.q", ["encoder_attn.q_proj"]),
                  ("cross.c_kv", ["encoder_attn.k_proj", "encoder_attn.v_proj"]), ("cross.c_proj", ["encoder_attn.out_proj"])]
    return [(f"{dst}{ours}.{p}", [f"{src}{n}.{p}" for n in theirs]) for ours, theirs in pairs for p in ("weight", "bias")]


def weight_map(cfg: Seq2SeqConfig, model_type: str) -> list[tuple[str, list[str]]]:
    """Every tensor of ours and the Hugging Face tensors it is made of (row-wise concatenation)."""
    out: list[tuple[str, list[str]]] = []
    if model_type in T5_TYPES:
        out.append(("shared.weight", ["shared.weight"]))
        for stack, n, decoder in (("encoder", cfg.n_layer, False), ("decoder", cfg.decoder_layers, True)):
            out.append((f"{stack}.rel_bias.weight", [f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]))
            for i in range(n):
                out += _t5_layer_map(stack, i, decoder, cfg.mlp == "gated")
            out.append((f"{stack}.ln_f.weight", [f"{stack}.final_layer_norm.weight"]))
    else:
        out.append(("shared.weight", ["model.shared.weight"]))
        for stack, n, decoder in (("encoder", cfg.n_layer, False), ("decoder", cfg.decoder_layers, True)):
            if cfg.pos_embedding == "learned":
                out.append((f"{stack}.wpe.weight", [f"model.{stack}.embed_positions.weight"]))
            if cfg.embedding_norm:
                out += [(f"{stack}.ln_emb.{p}", [f"model.{stack}.layernorm_embedding.{p}"]) for p in ("weight", "bias")]
            for i in range(n):
                out += _bart_layer_map(stack, i, decoder)
            if cfg.final_norm:
                out += [(f"{stack}.ln_f.{p}", [f"model.{stack}.layer_norm.{p}"]) for p in ("weight", "bias")]
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", ["lm_head.weight"]))
    return out


def arlm_state_from_hf(sd: dict[str, torch.Tensor], cfg: Seq2SeqConfig, model_type: str,
                       where: str) -> dict[str, torch.Tensor]:
    """Rename and fuse Hugging Face tensors into our state dict; anything left over is refused."""
    sd = dict(sd)
    if model_type in BART_TYPES:
        sd = {k if k.startswith(("model.", "lm_head.", "final_logits_bias")) else f"model.{k}": v for k, v in sd.items()}
    out = {ours: torch.cat([_pop(sd, n, where) for n in theirs]) if len(theirs) > 1 else _pop(sd, theirs[0], where)
           for ours, theirs in weight_map(cfg, model_type)}
    if cfg.logits_bias:
        bias = sd.pop("final_logits_bias", None)
        out["final_logits_bias"] = (bias.reshape(-1) if bias is not None
                                    else torch.zeros(cfg.vocab_size, dtype=out["shared.weight"].dtype))
    prefix = "" if model_type in T5_TYPES else "model."
    for key in (f"{prefix}encoder.embed_tokens.weight", f"{prefix}decoder.embed_tokens.weight", "lm_head.weight"):
        sd.pop(key, None)  # the shared embedding's copies (a different lm_head was taken above)
    for key in list(sd):
        # fixed tables some files carry (computed here), and a T5 bias transformers never reads
        if re.fullmatch(r"model\.(en|de)coder\.embed_positions\.weight", key) and cfg.pos_embedding == "sinusoidal" \
                or key == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight":
            del sd[key]
    if sd:
        extra = sorted(sd)
        raise UserError(f"{where}: unexpected weights {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} "
                        f"(an architecture variant arlm does not implement)")
    return out


def hf_state_from_arlm(model: torch.nn.Module, model_type: str) -> dict[str, torch.Tensor]:
    """Our weights in the Hugging Face layout of ``model_type`` (inverse of :func:`arlm_state_from_hf`)."""
    cfg = model.config
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in weight_map(cfg, model_type):
        parts = sd[ours].chunk(len(theirs)) if len(theirs) > 1 else [sd[ours]]
        out.update({n: p.contiguous() for n, p in zip(theirs, parts)})
    if model_type == "pegasus":  # transformers' Pegasus saves its fixed tables (and warns when they are missing)
        for stack in ("encoder", "decoder"):
            out[f"model.{stack}.embed_positions.weight"] = sinusoids(cfg.block_size, cfg.n_embd)
    if model_type in BART_TYPES:  # always added there: zeros compute the same function as none
        out["final_logits_bias"] = (sd["final_logits_bias"].reshape(1, -1).contiguous() if cfg.logits_bias
                                    else torch.zeros(1, cfg.vocab_size, dtype=sd["shared.weight"].dtype))
    return out


# ----------------------------------------------------------------------------------------------
# writing: which family's layout expresses a config exactly


def _act_name(cfg: Seq2SeqConfig, target: str) -> str:
    if cfg.activation not in HF_ACTIVATION:
        raise UserError(f"{target} has no activation {cfg.activation!r}")
    return HF_ACTIVATION[cfg.activation]


def hf_family(cfg: Seq2SeqConfig) -> str:
    """The transformers model_type whose architecture is ``cfg`` exactly (else UserError naming why):
    relative positions -> t5; learned -> bart (post-norm) or mbart (pre-norm); sinusoidal -> marian
    (post-norm) or pegasus (pre-norm)."""
    def need(family: str, checks: list[tuple[bool, str]]) -> str:
        bad = [what for ok, what in checks if not ok]
        if bad:
            raise UserError(f"this encoder-decoder cannot be written as {family}: " + "; ".join(bad))
        return family

    if cfg.pos_embedding == "relative":
        return need("T5", [(cfg.norm == "rmsnorm", "norm must be rmsnorm"), (not cfg.post_norm, "it must be pre-norm"),
                           (not cfg.embedding_norm and cfg.final_norm, "T5 has final norms and no embedding norm"),
                           (not cfg.bias, "T5 has no biases"), (not cfg.scale_embedding, "T5 does not scale embeddings"),
                           (not cfg.scale_attention, "T5 does not scale attention scores"),
                           (not cfg.logits_bias, "T5 has no logits bias"),
                           (not (cfg.mlp == "gated" and cfg.activation == "gelu"),
                            "T5's gated-gelu is the tanh GELU (activation gelu_tanh)")])
    family = {("learned", True): "bart", ("learned", False): "mbart", ("sinusoidal", True): "marian",
              ("sinusoidal", False): "pegasus"}[(cfg.pos_embedding, cfg.post_norm)]
    shape = BART_SHAPES[family]
    return need(family, [(cfg.norm == "layernorm", "norm must be layernorm"), (cfg.bias, "it needs biases"),
                         (cfg.mlp == "standard", "mlp must be standard"), (cfg.scale_attention, "it scales attention"),
                         (not cfg.scale_decoder_output, "it does not rescale the decoder's output"),
                         (cfg.embedding_norm == shape["embedding_norm"],
                          f"embedding_norm must be {str(shape['embedding_norm']).lower()}"),
                         (cfg.final_norm == shape["final_norm"], f"final_norm must be {str(shape['final_norm']).lower()}"),
                         (cfg.norm_eps == 1e-5, "its LayerNorms use eps 1e-5"),
                         (cfg.head_dim in (0, cfg.n_embd // cfg.n_head), "head_dim must be n_embd / n_head"),
                         (cfg.source_len == cfg.block_size, "max_source_len must equal block_size"),
                         (cfg.tie_embeddings, "its output layer is the embedding")])


def hf_seq2seq_config(cfg: Seq2SeqConfig, family: str, pad: int, bos: int | None, eos) -> dict[str, Any]:
    """config.json for ``family`` (from :func:`hf_family`)."""
    common = dict(vocab_size=cfg.vocab_size, d_model=cfg.n_embd, pad_token_id=pad, bos_token_id=bos, eos_token_id=eos,
                  decoder_start_token_id=cfg.decoder_start_token_id, is_encoder_decoder=True, dtype="float32")
    if family == "T5":
        act = _act_name(cfg, "T5")
        return dict(architectures=["T5ForConditionalGeneration"], model_type="t5", d_kv=cfg.hs, d_ff=cfg.hidden_size,
                    num_layers=cfg.n_layer, num_decoder_layers=cfg.decoder_layers, num_heads=cfg.n_head,
                    relative_attention_num_buckets=cfg.relative_buckets,
                    relative_attention_max_distance=cfg.relative_max_distance, layer_norm_epsilon=cfg.norm_eps,
                    feed_forward_proj=("gated-gelu" if act == "gelu_new" else f"gated-{act}") if cfg.mlp == "gated" else act,
                    n_positions=cfg.block_size, dropout_rate=0.0, tie_word_embeddings=cfg.tie_embeddings,
                    scale_decoder_outputs=cfg.scale_decoder_output, **common)
    arch = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration",
            "pegasus": "PegasusForConditionalGeneration", "marian": "MarianMTModel"}[family]
    out = dict(architectures=[arch], model_type=family, encoder_layers=cfg.n_layer, decoder_layers=cfg.decoder_layers,
               encoder_attention_heads=cfg.n_head, decoder_attention_heads=cfg.n_head,
               encoder_ffn_dim=cfg.hidden_size, decoder_ffn_dim=cfg.hidden_size, max_position_embeddings=cfg.block_size,
               activation_function=_act_name(cfg, family), scale_embedding=cfg.scale_embedding, dropout=0.0,
               attention_dropout=0.0, activation_dropout=0.0, tie_word_embeddings=True, **common)
    if family == "marian":
        out.update(decoder_vocab_size=cfg.vocab_size, share_encoder_decoder_embeddings=True)
    return out
