"""Typed configuration: the only place defaults live.

Every verb's options are a dataclass here. The CLI (``arlm/cli.py``) builds its flags from these
fields (name, type, default and the ``help`` metadata), and TOML files are read into the same classes,
so a default is written exactly once.

A training TOML has top-level training keys and a ``[model]`` table::

    max_steps = 2000
    lr = 1e-3
    [model]
    n_layer = 4
    n_embd = 256
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arlm.errors import UserError


def _f(default, help: str, choices: tuple | None = None, metavar: str | None = None, **kw):
    """A dataclass field with CLI help text (and optional choices / placeholder name) in its metadata."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if metavar is not None:
        meta["metavar"] = metavar
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# ----------------------------------------------------------------------------------------------
# model


MODEL_TYPES = ("gpt", "lstm", "seq2seq", "encoder")
DEFAULT_DEVICE = "auto"
DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto (CUDA, then Apple MPS, then CPU)"
PRECISIONS = ("auto", "float32", "bfloat16", "int8")


@dataclass
class ModelConfig:
    """What every model type has: its family, vocabulary, context, depth, width, dropout and tying
    (the GPT's names). A model type's own config adds its fields (see ``MODEL_CONFIGS``)."""

    type: str = _f("gpt", "model family: gpt (decoder-only Transformer), lstm (embedding -> LSTM -> linear, the "
                          "recurrent baseline; takes vocab_size, block_size, n_layer, n_embd, dropout, tie_embeddings) "
                          "or seq2seq (encoder-decoder Transformer: T5, BART, Pegasus, Marian) or encoder (a "
                          "bidirectional masked-language-model encoder: BERT)",
                   choices=MODEL_TYPES)
    vocab_size: int = _f(0, "vocabulary size; set from the prepared data's tokenizer when 0")
    block_size: int = _f(256, "context length in tokens")
    n_layer: int = _f(6, "number of Transformer blocks (LSTM: stacked LSTM layers)")
    n_embd: int = _f(384, "embedding width (must be divisible by n_head unless head_dim is set; LSTM: also the hidden width)")
    dropout: float = _f(0.2, "dropout probability on embeddings, attention and residual paths")
    tie_embeddings: bool = _f(True, "share the output layer's weight with the token embedding (Press & Wolf 2017)")

    @property
    def kind(self) -> str:
        """The family's name in messages: "a GPT", "an LSTM", "an encoder-decoder (seq2seq)"."""
        return {"gpt": "a GPT", "lstm": "an LSTM", "seq2seq": "an encoder-decoder (seq2seq)",
                "encoder": "a masked-language-model encoder (BERT)"}[self.type]

    def validate(self) -> None:
        for name in ("block_size", "n_layer", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise UserError(f"model.vocab_size must be positive (0: take it from the data), got {self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if MODEL_CONFIGS[self.type] is not type(self):
            raise UserError(f"model.type '{self.type}' needs a {MODEL_CONFIGS[self.type].__name__}")


@dataclass
class GPTConfig(ModelConfig):
    """Shape of the decoder-only Transformer (names follow GPT-2 / nanoGPT).

    The defaults are GPT-2's architecture. Llama-family models (Llama 2/3, Mistral, Qwen2, SmolLM,
    TinyLlama) are the same class with ``pos_embedding="rope"``, ``norm="rmsnorm"``, ``mlp="gated"``,
    ``activation="silu"``, ``bias=False`` and usually ``n_kv_head < n_head`` and untied embeddings.
    """

    n_head: int = _f(6, "attention (query) heads per block")
    n_kv_head: int = _f(0, "key/value heads: 0 = n_head (multi-head), 1 = multi-query, else grouped-query")
    head_dim: int = _f(0, "width of one attention head (0: n_embd // n_head)")
    intermediate_size: int = _f(0, "hidden width of the MLP (0: 4 * n_embd, or 8/3 * n_embd rounded up to 64 when gated)")
    bias: bool = _f(True, "use biases in every Linear layer and LayerNorm (GPT-2 does, Llama does not)")
    qkv_bias: bool = _f(False, "biases on the query/key/value projections even when bias is false (Qwen2)")
    attn_bias: bool = _f(False, "biases on the query/key/value and output projections even when bias is false")
    mlp_bias: bool = _f(False, "biases in the MLP even when bias is false")
    pos_embedding: str = _f("learned", "learned absolute positions (GPT-2) or rotary embeddings (RoPE, Su et al. 2021)",
                            choices=("learned", "rope"))
    rope_theta: float = _f(10000.0, "RoPE base frequency")
    rope_scaling: str = _f("none", "RoPE context extension: linear position interpolation, or Llama 3.1's frequency-dependent scaling",
                           choices=("none", "linear", "llama3"))
    rope_factor: float = _f(1.0, "RoPE scaling factor (linear and llama3)")
    rope_low_freq_factor: float = _f(1.0, "llama3 RoPE scaling: low_freq_factor")
    rope_high_freq_factor: float = _f(4.0, "llama3 RoPE scaling: high_freq_factor")
    rope_original_block_size: int = _f(0, "llama3 RoPE scaling: original_max_position_embeddings")
    norm: str = _f("layernorm", "normalisation layer", choices=("layernorm", "rmsnorm"))
    norm_eps: float = _f(1e-5, "epsilon of the normalisation layers")
    mlp: str = _f("standard", "standard: fc -> act -> proj (GPT-2); gated: proj(act(gate) * up), SwiGLU with silu (Shazeer 2020)",
                  choices=("standard", "gated"))
    activation: str = _f("gelu_tanh", "MLP activation (gelu_tanh is GPT-2's 'gelu_new'; relu2 = relu(x)^2, So et al. 2021)",
                         choices=("gelu_tanh", "gelu", "silu", "relu", "relu2"))
    qk_norm: bool = _f(False, "normalise each head's queries and keys (RMS, no weights) before attention "
                              "(Dehghani et al. 2023; the modded-nanogpt speedrun)")
    logit_softcap: float = _f(0.0, "squash the output logits into (-c, c) with c * tanh(logits / c) (Gemma 2; 0: off)")
    zero_init_proj: bool = _f(False, "start the attention and MLP output projections at zero, so each block starts as "
                                     "the identity (the modded-nanogpt speedrun)")
    sliding_window: int = _f(0, "each position attends to at most this many positions, itself included (Mistral); 0: the whole context")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hs(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        """Hidden width of the MLP."""
        if self.intermediate_size:
            return self.intermediate_size
        if self.mlp == "gated":  # keep the parameter count of a 4x MLP with 3 matrices instead of 2
            return 64 * math.ceil(8 * self.n_embd / 3 / 64)
        return 4 * self.n_embd

    def validate(self) -> None:
        super().validate()
        if self.n_head <= 0:
            raise UserError(f"model.n_head must be a positive integer, got {self.n_head}")
        for name in ("n_kv_head", "head_dim", "intermediate_size", "rope_original_block_size", "sliding_window"):
            if getattr(self, name) < 0:
                raise UserError(f"model.{name} must be >= 0 (0: default), got {getattr(self, name)}")
        if not self.head_dim and self.n_embd % self.n_head:
            raise UserError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))}"
            )
        if self.n_kv_head > self.n_head or self.n_head % self.kv_heads:
            raise UserError(f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({self.n_kv_head})")
        if self.pos_embedding == "rope" and self.hs % 2:
            raise UserError(f"rotary embeddings need an even head width, got {self.hs}")
        if self.logit_softcap < 0 or not math.isfinite(self.logit_softcap):
            raise UserError(f"model.logit_softcap must be a finite number >= 0 (0: off), got {self.logit_softcap}")
        for name in ("rope_theta", "rope_factor", "norm_eps"):
            if getattr(self, name) <= 0:
                raise UserError(f"model.{name} must be > 0, got {getattr(self, name)}")
        if self.rope_scaling == "llama3" and (not self.rope_original_block_size
                                              or self.rope_high_freq_factor <= self.rope_low_freq_factor):
            raise UserError("llama3 RoPE scaling needs rope_original_block_size > 0 and "
                            "rope_high_freq_factor > rope_low_freq_factor")


@dataclass
class LSTMConfig(ModelConfig):
    """The LSTM baseline (arlm/model/lstm.py): embedding -> ``n_layer`` LSTM layers of width ``n_embd`` -> linear."""

    type: str = _f("lstm", "model family (see GPTConfig.type)", choices=MODEL_TYPES)


SEQ2SEQ_POSITIONS = ("relative", "learned", "sinusoidal")


@dataclass
class Seq2SeqConfig(ModelConfig):
    """Shape of the encoder-decoder Transformer (arlm/model/seq2seq.py): a bidirectional encoder over the
    source and a causal decoder that also attends to the encoder's output (Vaswani et al. 2017).

    ``block_size`` is the decoder's (target's) positions, ``max_source_len`` the encoder's; ``n_layer``
    counts encoder blocks. The defaults are T5 v1.1's architecture (Raffel et al. 2020; relative position
    buckets, RMSNorm without bias, pre-norm, gated-GELU). The published families are the same class:

    ==========  ==========  ==========  ===========================================================
    family      positions   norm        other
    ==========  ==========  ==========  ===========================================================
    T5 (1.0)    relative    rms, pre    relu MLP, no 1/sqrt(d) attention scale, output x d^-0.5
    T5 1.1/Flan relative    rms, pre    gated-GELU (tanh), untied output layer
    BART        learned     ln, post    layernorm_embedding, biases, final_logits_bias
    mBART       learned     ln, pre     layernorm_embedding + final norms, sqrt(d) embedding scale
    Pegasus     sinusoidal  ln, pre     final norms, sqrt(d) embedding scale
    Marian      sinusoidal  ln, post    sqrt(d) embedding scale, decoder starts at the pad token
    ==========  ==========  ==========  ===========================================================
    """

    type: str = _f("seq2seq", "model family (see GPTConfig.type)", choices=MODEL_TYPES)
    block_size: int = _f(256, "decoder (target) positions")
    n_layer: int = _f(6, "encoder blocks")
    n_decoder_layer: int = _f(0, "decoder blocks (0: n_layer)")
    n_embd: int = _f(384, "model width (d_model)")
    n_head: int = _f(6, "attention heads per block")
    head_dim: int = _f(0, "width of one attention head (0: n_embd // n_head; T5's d_kv)")
    intermediate_size: int = _f(0, "hidden width of the MLP (0: 4 * n_embd; T5's d_ff)")
    max_source_len: int = _f(0, "encoder (source) positions (0: block_size)")
    pos_embedding: str = _f("relative", "relative position buckets added to attention (T5), learned absolute positions "
                                        "(BART, mBART) or fixed sinusoids (Marian, Pegasus)", choices=SEQ2SEQ_POSITIONS)
    relative_buckets: int = _f(32, "relative positions: number of buckets (T5's relative_attention_num_buckets)")
    relative_max_distance: int = _f(128, "relative positions: distance of the last bucket (T5's relative_attention_max_distance)")
    norm: str = _f("rmsnorm", "normalisation layer (T5's is RMSNorm without bias)", choices=("layernorm", "rmsnorm"))
    norm_eps: float = _f(1e-6, "epsilon of the normalisation layers")
    post_norm: bool = _f(False, "normalise after each residual addition (BART, Marian) instead of before each sub-layer")
    embedding_norm: bool = _f(False, "normalise the embeddings (BART's layernorm_embedding)")
    final_norm: bool = _f(True, "normalise each stack's output (T5, mBART, Pegasus)")
    bias: bool = _f(False, "biases in the linear layers and LayerNorms (BART, Marian, Pegasus)")
    mlp: str = _f("gated", "standard: fc -> act -> proj; gated: proj(act(gate) * up) (T5 v1.1's gated-GELU)",
                  choices=("standard", "gated"))
    activation: str = _f("gelu_tanh", "MLP activation (gelu_tanh is 'gelu_new'; silu is 'swish')",
                         choices=("gelu_tanh", "gelu", "silu", "relu"))
    scale_embedding: bool = _f(False, "multiply token embeddings by sqrt(n_embd) (Marian, Pegasus, mBART)")
    scale_attention: bool = _f(True, "divide attention scores by sqrt(head width) (T5 does not)")
    scale_decoder_output: bool = _f(False, "multiply the decoder's output by n_embd^-0.5 before the output layer (T5 1.0)")
    logits_bias: bool = _f(False, "a fixed bias added to the logits (BART's final_logits_bias)")
    decoder_start_token_id: int = _f(0, "token the decoder starts from (T5 and Marian: the pad token; BART: </s>)")
    tie_embeddings: bool = _f(True, "share the output layer's weight with the token embedding")
    dropout: float = _f(0.1, "dropout probability on embeddings, attention and residual paths")

    @property
    def hs(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        return self.intermediate_size or 4 * self.n_embd

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    @property
    def source_len(self) -> int:
        return self.max_source_len or self.block_size

    def validate(self) -> None:
        super().validate()
        if self.n_head <= 0:
            raise UserError(f"model.n_head must be a positive integer, got {self.n_head}")
        for name in ("n_decoder_layer", "head_dim", "intermediate_size", "max_source_len", "decoder_start_token_id"):
            if getattr(self, name) < 0:
                raise UserError(f"model.{name} must be >= 0 (0: default), got {getattr(self, name)}")
        if not self.head_dim and self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}), "
                            f"or set model.head_dim")
        if self.pos_embedding == "relative" and (self.relative_buckets < 2 or self.relative_max_distance < 2):
            raise UserError("relative positions need relative_buckets >= 2 and relative_max_distance >= 2")
        if self.pos_embedding == "sinusoidal" and self.n_embd % 2:
            raise UserError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if not self.norm_eps > 0:
            raise UserError(f"model.norm_eps must be > 0, got {self.norm_eps}")
        if self.vocab_size and self.decoder_start_token_id >= self.vocab_size:
            raise UserError(f"model.decoder_start_token_id ({self.decoder_start_token_id}) is outside the vocabulary "
                            f"(0..{self.vocab_size - 1})")


@dataclass
class EncoderConfig(ModelConfig):
    """Shape of the bidirectional masked-language-model encoder (arlm/model/encoder.py): BERT's
    architecture (Devlin et al. 2019) and defaults (BERT-base: 12 layers, 768 wide, 12 heads; post-norm
    LayerNorm, GELU, learned absolute positions, two token types). ``block_size`` is BERT's
    max_position_embeddings."""

    type: str = _f("encoder", "model family (see GPTConfig.type)", choices=MODEL_TYPES)
    block_size: int = _f(512, "positions (BERT's max_position_embeddings)")
    n_layer: int = _f(12, "encoder blocks")
    n_embd: int = _f(768, "model width (hidden_size)")
    n_head: int = _f(12, "attention heads per block")
    intermediate_size: int = _f(0, "hidden width of the MLP (0: 4 * n_embd)")
    activation: str = _f("gelu", "MLP and prediction-head activation (gelu: the exact one, BERT's)",
                         choices=("gelu", "gelu_tanh", "relu", "silu"))
    norm_eps: float = _f(1e-12, "epsilon of the LayerNorms (BERT's layer_norm_eps)")
    type_vocab_size: int = _f(2, "token types (segment A / B)")
    dropout: float = _f(0.1, "dropout probability on embeddings, attention and residual paths")

    @property
    def hidden_size(self) -> int:
        return self.intermediate_size or 4 * self.n_embd

    def validate(self) -> None:
        super().validate()
        if self.n_head <= 0 or self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.intermediate_size < 0 or self.type_vocab_size <= 0:
            raise UserError("model.intermediate_size must be >= 0 and model.type_vocab_size > 0")
        if not self.norm_eps > 0:
            raise UserError(f"model.norm_eps must be > 0, got {self.norm_eps}")


# Each model type's config class; arlm/model/registry.py pairs them with the model classes.
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {"gpt": GPTConfig, "lstm": LSTMConfig, "seq2seq": Seq2SeqConfig,
                                               "encoder": EncoderConfig}


# Named model shapes, kept as data. "gpt2*" are the published GPT-2 sizes (Radford et al. 2019).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
    "char-small": dict(block_size=128, n_layer=4, n_head=4, n_embd=192, dropout=0.0),
    "char-medium": dict(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    "gpt2": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0),
    "gpt2-medium": dict(block_size=1024, n_layer=24, n_head=16, n_embd=1024, dropout=0.0),
    "gpt2-large": dict(block_size=1024, n_layer=36, n_head=20, n_embd=1280, dropout=0.0),
    "gpt2-xl": dict(block_size=1024, n_layer=48, n_head=25, n_embd=1600, dropout=0.0),
    # Llama-style architecture (Touvron et al. 2023) at a size that trains on a laptop CPU.
    "llama-tiny": dict(block_size=256, n_layer=4, n_head=4, n_kv_head=2, n_embd=256, dropout=0.0, bias=False,
                       pos_embedding="rope", norm="rmsnorm", norm_eps=1e-6, mlp="gated", activation="silu",
                       tie_embeddings=False),
}


# ----------------------------------------------------------------------------------------------
# prepare


@dataclass
class PrepareConfig:
    """Options of ``arlm prepare``: corpus files -> tokenizer + token shards."""

    inputs: list[str] = _f([], "text files, folders, glob patterns or .jsonl files")
    out: str = _f("", "output folder for train.bin, val.bin, meta.json and tokenizer.json", metavar="DIR")
    tokenizer: str = _f("char", "tokenizer to build from the corpus", choices=("char", "bpe"))
    vocab_size: int = _f(8192, "vocabulary size for --tokenizer bpe (including 256 byte tokens and specials)")
    val_fraction: float = _f(0.1, "fraction of tokens (the end of the corpus) held out for validation")
    glob: str = _f("**/*.txt", "which files to take from a folder given as input")
    jsonl_field: str = _f("text", "the field holding the text in .jsonl inputs")
    errors: str = _f(
        "strict", "what to do with bytes that are not UTF-8: stop with an error, or replace them with U+FFFD",
        choices=("strict", "replace"),
    )
    control: str = _f("", "control code written before each document, e.g. '<work={name}>' ({name}: the file name "
                          "without extension; for .jsonl inputs {FIELD} is the record's FIELD); generate with --control",
                      metavar="TEMPLATE")

    def validate(self) -> None:
        if not self.inputs:
            raise UserError("no input given: name one or more text files, folders, globs or .jsonl files")
        if not self.out:
            raise UserError("no output folder given: add --out DIR")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.tokenizer == "bpe" and not 260 <= self.vocab_size <= 4_294_967_295:
            raise UserError(f"--vocab-size for bpe must be at least 260 (256 bytes + specials), got {self.vocab_size}")


# ----------------------------------------------------------------------------------------------
# images (`arlm image ...`)


@dataclass
class ImagePrepareConfig:
    """Options of ``arlm image prepare``: images -> pixel tokenizer + token shards of whole-image records."""

    source: str = _f("", "'digits' (scikit-learn's bundled 8x8 handwritten digits), or a folder of PNG/JPEG files "
                         "(its subfolders, if any, name the classes)", metavar="digits|DIR")
    out: str = _f("", "output folder for train.bin, val.bin, meta.json and tokenizer.json", metavar="DIR")
    size: str = _f("", "resize every image to WIDTHxHEIGHT (default: the first image's size; digits: 8x8)",
                   metavar="WxH")
    color: str = _f("gray", "grey levels, or RGB colours mapped to a k-means palette", choices=("gray", "rgb"))
    levels: int = _f(0, "grey levels (default: 17 for digits, whose values are 0..16; 16 for files)")
    palette: int = _f(16, "colours in the palette for --color rgb (k-means on the training pixels)")
    labels: bool = _f(True, "open each image with its class (digits: the digit; a folder: the subfolder), for "
                            "class-conditional sampling")
    test_fraction: float = _f(0.2, "fraction of images held out (a stratified random split)")
    shift: int = _f(0, "augment the training images with copies shifted by up to N pixels in each direction "
                       "((2N+1)^2 images for one; the held-out images are never shifted)")
    seed: int = _f(0, "seed of the split and the palette (digits with seed 0: scikit-learn's "
                      "train_test_split(test_size=0.2, random_state=0))")

    def validate(self) -> None:
        if not self.source:
            raise UserError("no images given: --source digits, or --source DIR (a folder of PNG/JPEG files)")
        if not self.out:
            raise UserError("no output folder given: add --out DIR")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        if self.levels and not 2 <= self.levels <= 256:
            raise UserError(f"--levels must be between 2 and 256, got {self.levels}")
        if self.color == "rgb" and not 2 <= self.palette <= 4096:
            raise UserError(f"--palette must be between 2 and 4096 colours, got {self.palette}")
        if self.size:
            image_size(self.size)
        if not 0 <= self.shift <= 8:
            raise UserError(f"--shift must be between 0 and 8 pixels, got {self.shift}")


def image_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height), each 1..4096."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--size must be WIDTHxHEIGHT, e.g. 32x32, got {text!r}")
    w, h = (int(p) for p in parts)
    if not (1 <= w <= 4096 and 1 <= h <= 4096):
        raise UserError(f"--size must be between 1x1 and 4096x4096, got {text!r}")
    return w, h


@dataclass
class ImageSampleConfig:
    """Options of ``arlm image sample``: a grid of sampled images (and completions of held-out ones) as a PNG."""

    out: str = _f("", "PNG file for the grid", metavar="FILE.png")
    label: list[str] = _f([], "sample this class (repeatable; default: every class, a row each, and with "
                              "--unconditional one row drawn from the model's own choice of class)", metavar="CLASS")
    per_label: int = _f(8, "images per class (the grid's columns)")
    unconditional: int = _f(0, "also this many images whose class the model draws itself")
    complete: str = _f("", "instead: complete the bottom of held-out images from this prepared data folder's "
                           "test split, given their top rows", metavar="DATA")
    rows_given: int = _f(0, "with --complete: image rows given (default: the top half)")
    count: int = _f(8, "with --complete: images to complete")
    temperature: float = _f(1.0, "divide logits by this (1: the model's own distribution; 0: greedy)")
    top_k: int = _f(0, "sample only among the k most likely colours (0: off)")
    seed: int = _f(0, "random seed; the same seed gives the same grid")
    scale: int = _f(8, "draw each pixel as an NxN square in the PNG")
    overwrite: bool = _f(False, "replace a PNG at --out that this command did not write (its own earlier grid is "
                                "replaced anyway; a file that is not a PNG never is)")

    def validate(self) -> None:
        if not self.out:
            raise UserError("no output file given: add --out FILE.png")
        if not self.out.lower().endswith(".png"):
            raise UserError(f"--out must be a .png file, got {self.out}")
        for name, low, high in (("per_label", 1, 1000), ("unconditional", 0, 10_000), ("count", 1, 10_000),
                                ("scale", 1, 64), ("rows_given", 0, 4096)):
            if not low <= getattr(self, name) <= high:
                raise UserError(f"--{name.replace('_', '-')} must be between {low} and {high}, got {getattr(self, name)}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")


@dataclass
class ImageEvalConfig:
    """Options of ``arlm image eval``."""

    data: str = _f("", "the folder made by `arlm image prepare` the model was trained on (its test images are scored)",
                   metavar="DIR")
    samples: int = _f(0, "also draw this many class-conditional samples (the classes in turn) and report how many an "
                         "SVC trained on the real training images assigns to their class (0: skip)")
    temperature: float = _f(1.0, "sampling temperature for --samples")
    seed: int = _f(0, "random seed for --samples")

    def validate(self) -> None:
        if not self.data:
            raise UserError("no data given: add --data DIR (a folder made by `arlm image prepare`)")
        if not 0 <= self.samples <= 100_000:
            raise UserError(f"--samples must be between 0 and 100000, got {self.samples}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise UserError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")


# ----------------------------------------------------------------------------------------------
# time series (`arlm ts ...`)


CLASSICAL_FORECASTERS = ("seasonal-naive", "ar", "arima", "ets")  # arlm/timeseries/classical.py


@dataclass
class SeriesConfig:
    """Options of ``arlm ts fit|forecast|backtest``: which series, which models, how far ahead."""

    csv: str = _f("", "CSV file holding the series", metavar="FILE")
    column: str = _f("", "the CSV column of the series", metavar="NAME")
    date_column: str = _f("", "a CSV column of dates: rows are sorted by it and must be evenly spaced", metavar="NAME")
    freq: str = _f("", "pandas frequency of the dates (D, W, MS, QS, YS...; default: inferred); sets the seasonal period",
                   metavar="F")
    dataset: list[str] = _f([], "a real series bundled with statsmodels instead of --csv (repeatable; backtest: "
                                "'all' for every one): sunspots, nile, co2, elnino, elec_equip, macro-COLUMN, "
                                "interest-R, interest-Dp", metavar="NAME")
    model: list[str] = _f([], "forecaster (repeatable): seasonal-naive, ar, arima, ets, or the folder of a neural "
                              "forecaster (`arlm ts train`) (default: fit/forecast ar; backtest the four classical)",
                          metavar="NAME|DIR")
    horizon: int = _f(0, "steps to forecast (default: the seasonal period, at least 4)")
    windows: int = _f(3, "backtest: rolling-origin windows of --horizon steps in the held-out tail")
    ic: str = _f("aic", "AR(p): the information criterion that chooses p", choices=("aic", "bic"))
    max_lag: int = _f(0, "AR(p): the largest p tried (0: twice the seasonal period, at least 8)")
    order: str = _f("", "ARIMA: the order p,d,q (default: chosen by statsforecast's AutoARIMA)", metavar="P,D,Q")
    out: str = _f("", "forecast: a CSV of the forecast (and FILE.png beside it); backtest: a folder for results.csv "
                      "and a PNG per series", metavar="PATH")
    samples: int = _f(100, "neural forecaster: sample paths per forecast (quantiles and median are read from them)")
    temperature: float = _f(1.0, "neural forecaster: sampling temperature of the paths")
    seed: int = _f(0, "neural forecaster: seed of the first path (path i uses seed + i)")
    device: str = _f("auto", "neural forecaster: where it runs", choices=("auto", "cpu", "cuda", "mps"))
    overwrite: bool = _f(False, "forecast: replace a CSV at --out (or a PNG beside it) that `arlm ts forecast` did "
                                "not write (its own earlier forecast is replaced anyway). A backtest replaces only a "
                                "folder holding an earlier backtest's files")

    def validate(self) -> None:
        if not 1 <= self.samples <= 4096:
            raise UserError(f"--samples must be between 1 and 4096, got {self.samples}")
        if not 0 < self.temperature <= 100 or not math.isfinite(self.temperature):
            raise UserError(f"--temperature must be positive (1: the model's own distribution), got {self.temperature}")
        if bool(self.csv) == bool(self.dataset):
            raise UserError("give the series with --csv FILE --column NAME, or --dataset NAME (not both)")
        if self.csv and not self.column:
            raise UserError("--csv needs --column NAME (the series' column)")
        if not 0 <= self.horizon <= 10_000:
            raise UserError(f"--horizon must be between 1 and 10000 (0: the seasonal period), got {self.horizon}")
        if not 1 <= self.windows <= 1000:
            raise UserError(f"--windows must be between 1 and 1000, got {self.windows}")
        if self.max_lag < 0:
            raise UserError(f"--max-lag must be >= 0, got {self.max_lag}")
        for m in self.model:
            if m not in CLASSICAL_FORECASTERS and not is_model_dir(m):
                raise UserError(f"unknown --model {m!r}; choose seasonal-naive, ar, arima, ets or the folder of a "
                                f"neural forecaster (`arlm ts train --out DIR`)")
        if self.order:
            arima_order(self.order)


def is_model_dir(name: str) -> bool:
    """A --model value naming a folder (a neural forecaster) rather than a classical model."""
    import os

    return name not in CLASSICAL_FORECASTERS and (os.path.isdir(name) or os.sep in name)


@dataclass
class SeriesPrepareConfig:
    """Options of ``arlm ts prepare``: series -> Chronos-tokenised training records for a neural forecaster."""

    out: str = _f("", "output folder for train.bin, val.bin, meta.json and tokenizer.json", metavar="DIR")
    synthetic: int = _f(10_000, "synthetic series to draw (KernelSynth, ARMA, trend + seasonality, growth; 0: none)")
    synthetic_length: int = _f(256, "values per synthetic series")
    dataset: list[str] = _f([], "real series to train on (repeatable): a training collection (fertility, danish, "
                                "air-passengers), a bundled test series (sunspots, co2, macro-COLUMN...) or all of "
                                "them (all)", metavar="NAME")
    csv: str = _f("", "also train on a CSV file's column (--column)", metavar="FILE")
    column: str = _f("", "the CSV column of the series", metavar="NAME")
    exclude_tail: int = _f(0, "leave out the last N values of every real series (the windows a backtest will score)")
    context_length: int = _f(64, "values before the forecast in each record: they set the record's scale (--scaling)")
    prediction_length: int = _f(16, "values after the context in each record (how far ahead the model learns to forecast)")
    windows_per_series: int = _f(8, "records cut from each synthetic series, at random positions")
    real_windows: int = _f(32, "records cut from each real series, at random positions (real data weighs this much)")
    scaling: str = _f("mean", "how a record is normalised by its context: divided by the mean absolute value "
                              "(Chronos), or standardised by the mean and standard deviation (keeps small movements "
                              "of series far from zero)", choices=("mean", "standard"))
    bins: int = _f(4094, "uniform bins of the scaled values (Chronos: 4094)")
    limit: float = _f(15.0, "the bins span -limit..limit (scaled values beyond fall in the end bins)")
    val_fraction: float = _f(0.05, "fraction of the series (whole series) held out for validation")
    seed: int = _f(0, "seed of the synthetic series and the record positions")

    def validate(self) -> None:
        if not self.out:
            raise UserError("no output folder given: add --out DIR")
        if self.synthetic == 0 and not self.dataset and not self.csv:
            raise UserError("nothing to train on: give --synthetic N, --dataset NAME or --csv FILE --column NAME")
        if self.csv and not self.column:
            raise UserError("--csv needs --column NAME (the series' column)")
        for name, low in (("synthetic", 0), ("synthetic_length", 16), ("context_length", 1), ("prediction_length", 1),
                          ("windows_per_series", 1), ("real_windows", 1), ("exclude_tail", 0)):
            if getattr(self, name) < low:
                raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.synthetic and self.synthetic_length < self.prediction_length + 8:
            raise UserError(f"--synthetic-length {self.synthetic_length} leaves too little context before "
                            f"--prediction-length {self.prediction_length}; make it at least {self.prediction_length + 8}")
        if self.synthetic_length > 4096 or self.context_length + self.prediction_length > 8192:
            raise UserError("--synthetic-length must be <= 4096 and context + prediction length <= 8192")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")


def arima_order(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--order must be three integers p,d,q such as 2,1,1, got {text!r}")
    p, d, q = (int(x) for x in parts)
    if p > 50 or d > 2 or q > 50:
        raise UserError(f"--order {text}: p and q must be at most 50 and d at most 2")
    return p, d, q


# ----------------------------------------------------------------------------------------------
# audio (`arlm audio ...`)


MAX_SYNTHESIZED = 20_000  # files `arlm audio synthesize` writes at most


@dataclass
class AudioSynthConfig:
    """Options of ``arlm audio synthesize``: speech from text lines with Debian's espeak-ng."""

    text: list[str] = _f([], "text files whose lines are spoken (one utterance per line of 4 words or more)",
                         metavar="FILE")
    out: str = _f("", "new folder for the WAV files (one per line, voice and speed)", metavar="DIR")
    voice: list[str] = _f(["en-us", "en-gb", "en-gb-scotland"], "espeak-ng voices (repeatable; `espeak-ng --voices`)")
    speed: list[int] = _f([140, 175], "speaking rates in words per minute (repeatable)", metavar="WPM")
    lines: int = _f(40, "lines taken from the text (the first ones of 4 words or more)")

    def validate(self) -> None:
        if not self.text:
            raise UserError("no text given: add --text FILE (lines to speak)")
        if not self.out:
            raise UserError("no output folder given: add --out DIR")
        if not 1 <= self.lines <= 100_000:
            raise UserError(f"--lines must be between 1 and 100000, got {self.lines}")
        if not self.voice or any(not v or not all(c.isalnum() or c in "-+_" for c in v) for v in self.voice):
            raise UserError(f"--voice must name espeak-ng voices such as en-us, got {self.voice}")
        if any(not 80 <= s <= 450 for s in self.speed) or not self.speed:
            raise UserError(f"--speed must be between 80 and 450 words per minute, got {self.speed}")
        files = self.lines * len(self.voice) * len(self.speed)
        if files > MAX_SYNTHESIZED:  # espeak-ng takes about 0.1 s a file: over half an hour past this
            raise UserError(f"--lines {self.lines} x {len(self.voice)} voice(s) x {len(self.speed)} speed(s) would be "
                            f"{files:,} files, more than {MAX_SYNTHESIZED:,}; lower --lines, or give fewer voices "
                            f"or speeds")


@dataclass
class AudioPrepareConfig:
    """Options of ``arlm audio prepare``: WAV files -> mu-law tokenizer + token shards (utterances split whole)."""

    inputs: list[str] = _f([], "WAV (or FLAC, OGG) files or folders of them")
    out: str = _f("", "output folder for train.bin, val.bin, meta.json and tokenizer.json", metavar="DIR")
    sample_rate: int = _f(8000, "resample every file to this rate (Hz)", choices=(8000, 16000))
    test_fraction: float = _f(0.1, "fraction of the files (utterances, drawn at random) held out whole")
    seed: int = _f(0, "seed of the held-out draw")

    def validate(self) -> None:
        if not self.inputs:
            raise UserError("no input given: name WAV files or folders of them")
        if not self.out:
            raise UserError("no output folder given: add --out DIR")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")


@dataclass
class AudioEvalConfig:
    """Options of ``arlm audio eval``."""

    data: str = _f("", "the folder made by `arlm audio prepare` (its held-out utterances are scored)", metavar="DIR")
    lpc_order: int = _f(16, "order p of the linear-prediction baseline, AR(p) on the waveform")
    batch_size: int = _f(16, "windows scored at once")

    def validate(self) -> None:
        if not self.data:
            raise UserError("no data given: add --data DIR (a folder made by `arlm audio prepare`)")
        if not 1 <= self.lpc_order <= 256:
            raise UserError(f"--lpc-order must be between 1 and 256, got {self.lpc_order}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")


@dataclass
class AudioGenerateConfig:
    """Options of ``arlm audio generate``: continue a held-out utterance; WAV plus a waveform/spectrogram PNG."""

    data: str = _f("", "prepared folder whose held-out utterance opens the generation", metavar="DIR")
    out: str = _f("", "WAV file to write (a PNG of the waveform and spectrogram is written beside it)",
                  metavar="FILE.wav")
    utterance: int = _f(0, "which held-out utterance (0: the first)")
    prompt_seconds: float = _f(0.5, "seconds of the utterance given as the prompt")
    seconds: float = _f(1.0, "seconds to generate")
    temperature: float = _f(1.0, "divide logits by this (1: the model's own distribution)")
    seed: int = _f(0, "random seed")
    overwrite: bool = _f(False, "replace a WAV at --out (or a PNG beside it) that this command did not write (its "
                                "own earlier output is replaced anyway; a file of another kind never is)")

    def validate(self) -> None:
        if not self.data:
            raise UserError("no data given: add --data DIR (a folder made by `arlm audio prepare`)")
        if not self.out.lower().endswith(".wav"):
            raise UserError(f"--out must be a .wav file, got {self.out or 'nothing'}")
        if not 0.0 < self.prompt_seconds <= 60 or not 0.0 < self.seconds <= 60:
            raise UserError("--prompt-seconds and --seconds must be between 0 and 60")
        if self.utterance < 0:
            raise UserError(f"--utterance must be >= 0, got {self.utterance}")
        if not 0 < self.temperature < 100 or not math.isfinite(self.temperature):
            raise UserError(f"--temperature must be > 0, got {self.temperature}")


# ----------------------------------------------------------------------------------------------
# train


@dataclass
class TrainConfig:
    """Options of ``arlm train``. Model shape lives in ``model`` (the ``[model]`` table in TOML)."""

    data: str = _f("", "prepared data folder (output of `arlm prepare`), or, to fine-tune, a .jsonl file of "
                       "{prompt, completion} or {messages} examples", metavar="DIR|FILE")
    out: str = _f("", "output folder for checkpoints (best/, latest/), metrics.jsonl and loss.png", metavar="DIR")
    resume: str = _f("", "continue a stopped run from this output folder (or checkpoint folder)", metavar="DIR")
    overwrite: bool = _f(False, "start afresh even if --out already holds a run (its checkpoints are replaced)")
    preset: str = _f("", "named model shape to start from", choices=("",) + tuple(MODEL_PRESETS))
    max_steps: int = _f(5000, "optimizer steps to train for (the LR schedule spans this many)")
    max_minutes: float = _f(0.0, "stop after this many minutes of training, saving a checkpoint (0: no limit)")
    batch_size: int = _f(32, "sequences per micro-batch (per process under torchrun)")
    grad_accum_steps: int = _f(1, "micro-batches per optimizer step (effective batch = batch_size * this)")
    sampling: str = _f("random", "training windows: random (uniform, with replacement, as nanoGPT) or epoch "
                                 "(shuffled non-overlapping windows, each token once per epoch)", choices=("random", "epoch"))
    lr: float = _f(1e-3, "peak learning rate")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine/linear decay")
    lr_schedule: str = _f("cosine", "learning-rate schedule after warmup (docs/training.md has a plot of each); wsd: "
                                    "constant, then linear to min_lr over the last lr_decay_fraction of the steps",
                          choices=("cosine", "linear", "constant", "step", "cyclic", "plateau", "wsd"))
    lr_decay_fraction: float = _f(0.2, "wsd schedule: the final fraction of max_steps in which the rate decays")
    embedding_lr: float = _f(0.0, "peak learning rate of the token and position embeddings (0: --lr)")
    head_lr: float = _f(0.0, "peak learning rate of an untied output layer (0: --lr; model.tie_embeddings = false)")
    lr_decay_factor: float = _f(0.1, "step and plateau schedules: multiply the learning rate by this at each drop")
    lr_step_size: int = _f(0, "step schedule: drop the learning rate every this many steps after warmup (0: a third of the rest)")
    lr_cycle_steps: int = _f(0, "cyclic schedule: steps from min_lr up to lr; a cycle is twice this (0: an eighth of the rest)")
    plateau_patience: int = _f(2, "plateau schedule: evaluations without improvement before the learning rate drops")
    warmup_steps: int = _f(100, "steps of linear warmup from 0 to --lr")
    weight_decay: float = _f(0.1, "AdamW weight decay (applied to matrices only, not biases/norms)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.99, "AdamW beta2")
    optimizer: str = _f("adamw", "adamw for every weight, or muon: Muon (Jordan et al. 2024) for the matrices inside the "
                                 "Transformer blocks and AdamW (--lr) for embeddings, norms, biases and the output layer",
                        choices=("adamw", "muon"))
    muon_lr: float = _f(0.02, "Muon: peak learning rate of the block matrices (follows the same schedule as --lr)")
    muon_momentum: float = _f(0.95, "Muon: Nesterov momentum")
    muon_weight_decay: float = _f(0.0, "Muon: decoupled weight decay of the block matrices (times the learning rate)")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value (0: no clipping)")
    eval_interval: int = _f(250, "evaluate, log and checkpoint every this many steps")
    eval_batches: int = _f(20, "batches of validation data per periodic evaluation")
    final_eval: bool = _f(True, "evaluate the best checkpoint on the whole validation split at the end")
    patience: int = _f(0, "stop after this many evaluations without improvement (0: never stop early)")
    min_delta: float = _f(0.0, "smallest drop in validation loss that counts as an improvement")
    target_loss: float = _f(0.0, "stop at the first periodic evaluation whose validation loss is at or below this "
                                 "(time to quality; the whole split is then scored as usual; 0: off)")
    log_interval: int = _f(10, "record training loss every this many steps")
    seed: int = _f(1337, "random seed for initialisation, data order and dropout")
    device: str = _f(DEFAULT_DEVICE, DEVICE_HELP)
    dtype: str = _f("auto", "compute precision; auto = bfloat16 autocast on capable GPUs, float32 on CPU; bfloat16 on "
                            "a CPU without bfloat16 instructions (AVX512-BF16, AMX) warns and runs float32",
                    choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = _f(False, "compile the model with torch.compile (faster steps after a slow first one)")
    compile_mode: str = _f("default", "torch.compile mode with --compile: reduce-overhead replays each step's GPU "
                                      "kernels as CUDA graphs (small models on GPUs, whose steps wait on kernel "
                                      "launches); max-autotune also searches matrix-multiply kernels (slow to compile)",
                           choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    activation_checkpointing: bool = _f(False, "keep only each block's input during the forward pass and recompute the "
                                               "rest in backward: less memory for about a third more compute")
    fsdp: bool = _f(False, "under torchrun: shard parameters, gradients and optimizer state with FSDP2 instead of "
                           "replicating the model with DDP")
    threads: int = _f(0, "CPU threads for PyTorch (0: PyTorch's default)")
    progress: bool = _f(True, "show a progress bar")
    # -- fine-tuning (docs/finetuning.md): `arlm finetune` sets init_from from its --model
    init_from: str = _f("", "start from this model's weights (an arlm checkpoint or a Hugging Face folder) instead of "
                            "random ones; its shape and tokenizer are used, --data is tokenized with it", metavar="DIR")
    tokenizer: str = _f("", "JSONL data without --init-from: the folder whose tokenizer encodes the text (a folder made "
                            "by `arlm prepare`, or a model folder); the model is then trained from random weights",
                        metavar="DIR")
    val_fraction: float = _f(0.1, "JSONL data: fraction of the examples (the last ones) held out for validation")
    chat_template: str = _f("", "JSONL chat data: a Jinja chat template, or a file holding one (empty: the tokenizer's "
                                "own, else arlm's plain 'User: / Assistant:' template)", metavar="TEXT|FILE")
    packing: bool = _f(False, "JSONL data: pack examples end to end into full windows instead of padding each batch "
                              "to its longest example")
    lora_rank: int = _f(0, "LoRA: train rank-r adapters beside frozen weights (Hu et al. 2021); 0: train all weights")
    lora_alpha: float = _f(16.0, "LoRA: the adapters' output is scaled by lora_alpha / lora_rank")
    lora_dropout: float = _f(0.05, "LoRA: dropout on the adapters' input")
    lora_targets: list[str] = _f(["c_attn", "c_proj", "c_fc"], "LoRA: adapt the linear layers with these names "
                                 "(attention c_attn/c_proj, MLP c_fc/c_proj; repeatable)")
    adapter_only: bool = _f(False, "LoRA: checkpoints hold only the adapter weights and the path of the base model "
                                   "(default: base and adapters; loading merges them either way)")
    teacher: str = _f("", "distillation: a trained model whose next-token distributions the model also learns "
                          "(arlm/compress/distill.py; `arlm compress distill`)", metavar="DIR")
    distill_temperature: float = _f(2.0, "distillation: both models' logits are divided by this before the KL term")
    distill_alpha: float = _f(0.5, "distillation: weight of the KL term (1 - alpha: cross-entropy on the data)")
    keep_zeros: bool = _f(False, "weights that are exactly zero when training starts stay zero (the recovery "
                                 "fine-tune of a pruned model: `arlm compress prune --recover-steps`)")
    replay_data: str = _f("", "continual training: a prepared data folder (e.g. the original corpus) mixed into the "
                              "batches to limit forgetting", metavar="DIR")
    replay_fraction: float = _f(0.0, "continual training: fraction of each batch's sequences drawn from --replay-data")
    task: str = _f("", "fine-tune a task head in place of the output layer, from JSONL: classify ({text, label}), "
                       "ner ({tokens, tags}: BIO tags per word) or qa (SQuAD's {context, question, answers}); "
                       "empty: language modelling (docs/tasks.md)", choices=("", "classify", "ner", "qa"))
    model: GPTConfig | LSTMConfig | Seq2SeqConfig = field(default_factory=GPTConfig)

    def validate(self) -> None:
        if self.model.type == "seq2seq":
            if not self.init_from and not self.tokenizer and not self.resume:
                raise UserError("an encoder-decoder (seq2seq) learns from source/target pairs encoded by a tokenizer: "
                                "fine-tune one (--init-from DIR), or train one from scratch with --tokenizer DIR")
            given = [flag for on, flag in ((self.packing, "--packing"), (self.replay_data, "--replay-data"),
                                           (self.teacher, "--teacher"), (self.chat_template, "--chat-template"),
                                           (self.compile, "--compile")) if on]
            if given:
                raise UserError(f"{given[0]} does not apply to an encoder-decoder's source/target pairs; drop it")
        if self.task:
            if self.model.type != "gpt":
                raise UserError(f"task heads go on a decoder-only Transformer (gpt), not {self.model.type}")
            if not self.init_from and not self.tokenizer and not self.resume:
                raise UserError(f"--task {self.task} trains a head on labelled JSONL encoded by a tokenizer: fine-tune a "
                                f"model (--init-from DIR / `arlm finetune --model DIR`), or give --tokenizer DIR")
            given = [flag for on, flag in ((self.packing, "--packing"), (self.replay_data, "--replay-data"),
                                           (self.teacher, "--teacher"), (self.chat_template, "--chat-template"),
                                           (self.keep_zeros, "--keep-zeros"), (self.compile, "--compile"),
                                           (self.fsdp, "--fsdp")) if on]
            if given:
                raise UserError(f"{given[0]} does not apply to --task {self.task}; drop it")
        if not self.resume:
            if not self.data:
                raise UserError("no data given: add --data DIR (a folder made by `arlm prepare`)")
            if not self.out:
                raise UserError("no output folder given: add --out DIR")
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches", "log_interval"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "max_minutes", "min_delta", "target_loss",
                     "muon_lr", "muon_weight_decay", "embedding_lr", "head_lr"):
            v = getattr(self, name)
            if v < 0 or not math.isfinite(v):
                raise UserError(f"{name} must be a finite number >= 0, got {v}")
        if self.lr == 0:
            raise UserError("lr must be > 0")
        if self.compile_mode != "default" and not self.compile:
            raise UserError(f"compile_mode '{self.compile_mode}' applies to compiled training: add --compile")
        if self.warmup_steps < 0 or self.patience < 0 or self.threads < 0:
            raise UserError("warmup_steps, patience and threads must be >= 0")
        if self.lr_step_size < 0 or self.lr_cycle_steps < 0 or self.plateau_patience < 1:
            raise UserError("lr_step_size and lr_cycle_steps must be >= 0 (0: default) and plateau_patience >= 1")
        if not 0.0 < self.lr_decay_fraction <= 1.0:
            raise UserError(f"lr_decay_fraction must be in (0, 1], got {self.lr_decay_fraction}")
        if self.head_lr and self.model.tie_embeddings:
            raise UserError("head_lr sets the rate of an untied output layer; this model ties it to the embedding "
                            "(set model.tie_embeddings = false, or use embedding_lr)")
        if not 0.0 < self.lr_decay_factor <= 1.0:
            raise UserError(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.lora_rank < 0 or self.lora_alpha <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise UserError("lora_rank must be >= 0, lora_alpha > 0 and lora_dropout in [0, 1)")
        if self.lora_rank > self.model.n_embd:
            raise UserError(f"lora_rank ({self.lora_rank}) must be at most the model's width n_embd ({self.model.n_embd}): "
                            f"a rank above a layer's width adds parameters but no capacity")
        if self.lora_rank and not self.lora_targets:
            raise UserError("lora_targets is empty: name the linear layers to adapt (e.g. c_attn)")
        if self.adapter_only and not (self.lora_rank and self.init_from):
            raise UserError("adapter_only needs LoRA fine-tuning: give --lora-rank R and a base model (--init-from / --model)")
        if self.optimizer == "muon":
            self._check_muon()
        if self.keep_zeros and (self.fsdp or self.lora_rank):
            raise UserError("--keep-zeros trains whole, unsharded weights: not with --fsdp or --lora-rank")
        if not 0.0 <= self.distill_alpha <= 1.0 or not math.isfinite(self.distill_alpha):
            raise UserError(f"distill_alpha must be between 0 and 1, got {self.distill_alpha}")
        if not 0.0 < self.distill_temperature <= 100.0 or not math.isfinite(self.distill_temperature):
            raise UserError(f"distill_temperature must be > 0 (and at most 100), got {self.distill_temperature}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise UserError(f"replay_fraction must be in [0, 1), got {self.replay_fraction}")
        if bool(self.replay_data) != (self.replay_fraction > 0):
            raise UserError("replay needs both --replay-data DIR and --replay-fraction F (0 < F < 1)")
        self.model.validate()

    def _check_muon(self) -> None:
        if self.muon_lr == 0 or not 0.0 <= self.muon_momentum < 1.0:
            raise UserError(f"muon_lr must be > 0 and muon_momentum in [0, 1), got {self.muon_lr} and {self.muon_momentum}")
        if self.model.type != "gpt":
            raise UserError(f"--optimizer muon trains the matrices of Transformer blocks; a {self.model.type} model has "
                            f"none: use --optimizer adamw")
        if self.fsdp or self.lora_rank:
            raise UserError("--optimizer muon orthogonalises whole weight matrices: not with --fsdp (sharded matrices) "
                            "or --lora-rank (adapters train with adamw)")


# `arlm finetune`: TrainConfig with these defaults (explicit flags and --config win). Fine-tuning
# moves a trained model a little: a lower peak rate, a short warmup, frequent evaluation, and no
# weight decay pulling the pretrained weights towards zero.
FINETUNE_DEFAULTS: dict[str, Any] = dict(
    max_steps=500, lr=1e-4, min_lr=1e-5, warmup_steps=20, weight_decay=0.0, eval_interval=50, eval_batches=10,
    batch_size=8,
)
# LoRA's adapters start at zero and are few: they take a higher rate (Hu et al. 2021 use 2e-4 to 5e-4
# on GPT-2; small models here learn faster with 1e-3).
LORA_DEFAULTS: dict[str, Any] = dict(lr=1e-3, min_lr=1e-4)


# ----------------------------------------------------------------------------------------------
# generate / eval


# Temperatures below this decode greedily (as vLLM's _SAMPLING_EPS): dividing logits by less would
# overflow float32 and pick the most likely token anyway.
GREEDY_BELOW = 1e-5
# OpenAI's API reference bounds: frequency/presence penalties in [-2, 2], logit_bias values in [-100, 100].
PENALTY_RANGE, LOGIT_BIAS_RANGE = 2.0, 100.0
# Most new tokens one generation may ask for. A model slides its context window to continue past it,
# so the context does not bound a generation; this keeps its token buffers (rows x tokens) to megabytes.
MAX_NEW_TOKENS = 1_000_000


@dataclass
class SamplingParams:
    """One request's decoding controls: what the engine (arlm/generate/engine.py) needs to generate
    for it, each request with its own. ``arlm generate``, the Python API and the server all build one."""

    max_new_tokens: int = _f(200, "tokens to generate after the prompt")
    temperature: float = _f(1.0, "divide logits by this; 0 means greedy (always the most likely token)")
    top_k: int = _f(0, "sample only among the k most likely tokens (0: off)")
    top_p: float = _f(1.0, "nucleus sampling: smallest set of tokens whose probability sums to top_p (1: off)")
    min_p: float = _f(0.0, "min-p sampling: drop tokens less likely than min_p times the top token (0: off)")
    typical_p: float = _f(1.0, "locally typical sampling: keep the most typical tokens up to this probability mass (1: off)")
    repetition_penalty: float = _f(1.0, "CTRL-style penalty > 1 for tokens already in the context (1: off)")
    no_repeat_ngram_size: int = _f(0, "never repeat an n-gram of this size (0: off)")
    frequency_penalty: float = _f(0.0, "subtract this times a token's count in the generated text from its logit (OpenAI's; 0: off)")
    presence_penalty: float = _f(0.0, "subtract this from the logit of every token already generated (OpenAI's; 0: off)")
    bad_words: list[str] = _f([], "never generate this text (repeatable; its exact token sequence is banned)")
    logit_bias: list[str] = _f([], "add BIAS to token ID's logit, written ID=BIAS (repeatable; -100 bans, 100 forces)")
    min_new_tokens: int = _f(0, "do not end (end-of-text or a stop token) before this many new tokens")
    max_time: float = _f(0.0, "stop generating after this many seconds (0: no limit)")
    logprobs: bool = _f(False, "report each generated token's log-probability under the model")
    top_logprobs: int = _f(0, "with each token, report this many most likely alternatives and their log-probabilities")
    num_return_sequences: int = _f(1, "continuations per prompt (independent samples, or the best beams)")
    stop: list[str] = _f([], "stop when this text is generated (repeatable); the stop text is not returned")
    stop_token_ids: list[int] = _f([], "also end a sequence at this token id, besides the model's end-of-text (repeatable)",
                                   metavar="ID")
    forced_bos_token_id: int | None = _f(None, "the first generated token is always this id (mBART's target "
                                               "language code; transformers' forced_bos_token_id)", metavar="ID")
    forced_eos_token_id: int | None = _f(None, "the last token max_new_tokens allows is always this id "
                                               "(transformers' forced_eos_token_id)", metavar="ID")
    seed: int | None = _f(None, "random seed for sampling (default: nondeterministic); sequence i of n uses seed + i")
    json_schema: str = _f("", "structured output: only JSON valid under this JSON schema, given as its JSON text or a "
                              "file holding it ('{\"type\": \"object\"}' is any JSON object)", metavar="FILE|JSON")
    regex: str = _f("", "structured output: only text matching this regular expression (Rust regex syntax)", metavar="RE")

    @property
    def greedy(self) -> bool:
        """Greedy decoding (always the most likely token): temperature 0, or below GREEDY_BELOW."""
        return self.temperature < GREEDY_BELOW

    def validate(self) -> None:
        if not 0 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"max_new_tokens must be between 0 and at most {MAX_NEW_TOKENS:,} (generate longer texts in "
                            f"several calls), got {self.max_new_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise UserError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise UserError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not 0.0 < self.typical_p <= 1.0:
            raise UserError(f"typical_p must be in (0, 1] (1 = off), got {self.typical_p}")
        if self.repetition_penalty <= 0 or not math.isfinite(self.repetition_penalty):
            raise UserError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise UserError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.num_return_sequences < 1:
            raise UserError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if any(s == "" for s in self.stop):
            raise UserError("stop strings must not be empty")
        if any(s == "" for s in self.bad_words):
            raise UserError("bad_words must not be empty strings")
        for name in ("forced_bos_token_id", "forced_eos_token_id"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"{name} must be a token id >= 0, got {getattr(self, name)}")
        if any(t < 0 for t in self.stop_token_ids):
            raise UserError(f"stop_token_ids must be token ids >= 0, got {min(self.stop_token_ids)}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -PENALTY_RANGE <= getattr(self, name) <= PENALTY_RANGE:
                raise UserError(f"{name} must be between -{PENALTY_RANGE:g} and {PENALTY_RANGE:g} (as OpenAI's), "
                                f"got {getattr(self, name)}")
        if not math.isfinite(self.max_time):
            raise UserError(f"max_time must be a finite number, got {self.max_time}")
        if self.max_time < 0:
            raise UserError(f"max_time must be >= 0 seconds (0 = no limit), got {self.max_time}")
        if self.min_new_tokens < 0:
            raise UserError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if not 0 <= self.top_logprobs <= 20:
            raise UserError(f"top_logprobs must be between 0 and 20, got {self.top_logprobs}")
        self.parsed_logit_bias()
        if self.json_schema and self.regex:
            raise UserError("give one structured-output constraint: json_schema or regex, not both")
        self.parsed_json_schema()

    def parsed_json_schema(self) -> dict | None:
        """``json_schema`` as a JSON object (None without one)."""
        if not self.json_schema:
            return None
        try:
            schema = json.loads(self.json_schema)
        except ValueError as e:
            raise UserError(f"json_schema is not valid JSON ({e}); give a JSON schema such as "
                            f"'{{\"type\": \"object\"}}'") from None
        if not isinstance(schema, dict):
            raise UserError(f"json_schema must be a JSON object (a schema), got {type(schema).__name__}")
        return schema

    def parsed_logit_bias(self) -> dict[int, float]:
        """``logit_bias`` entries "ID=BIAS" as {id: bias}."""
        out: dict[int, float] = {}
        for item in self.logit_bias:
            token, sep, value = str(item).partition("=")
            try:
                tid, bias = int(token), float(value)
            except ValueError:
                tid, bias = -1, math.nan
            if not sep or tid < 0 or not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                raise UserError(f"logit_bias entries are TOKEN_ID=BIAS with a bias between -100 and 100 (e.g. 50256=-100; "
                                f"as OpenAI's), got {item!r}")
            out[tid] = bias
        return out


@dataclass
class GenerateConfig(SamplingParams):
    """Decoding controls of ``arlm generate`` and the Python API: a request's :class:`SamplingParams`
    and the choices around it (beam search, speculative decoding, compiling, prompt handling)."""

    echo: bool = _f(False, "also report the prompt tokens' log-probabilities (the first token has none)")
    num_beams: int = _f(1, "beam search with this many beams (1: off); deterministic, sampling controls are not used")
    length_penalty: float = _f(1.0, "beam search: a hypothesis scores sum(log p) / length ** length_penalty (> 0 favours longer ones)")
    early_stopping: bool = _f(False, "beam search: stop as soon as num_beams hypotheses have ended")
    use_cache: bool = _f(True, "use the KV cache (off recomputes the whole context each token; for testing)")
    draft_model: str = _f("", "speculative decoding: a smaller model with the same tokenizer proposes tokens that "
                              "this model checks in one pass (same output distribution; greedy output identical)", metavar="DIR")
    num_draft_tokens: int = _f(4, "speculative decoding: tokens the draft model proposes per round")
    compile: bool = _f(False, "compile the one-token decode step with torch.compile: faster tokens after a "
                              "slow first call (seconds to a minute); needs a C++ compiler on CPU")
    control: str = _f("", "control code to condition on, e.g. '<work=hamlet>': generation starts as a new document "
                          "beginning with it (the model must have been trained with such codes, `arlm prepare --control`)")
    token_healing: bool = _f(False, "token healing: drop the prompt's last token and make the output start by re-spelling "
                                    "it, so a prompt that ends mid-token (a newline before indented code, half a word) "
                                    "is continued with the tokens seen in training; the re-spelt text is not returned")

    def validate(self) -> None:
        super().validate()
        if self.num_beams < 1:
            raise UserError(f"num_beams must be >= 1 (1 = no beam search), got {self.num_beams}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise UserError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})")
        if not math.isfinite(self.length_penalty):
            raise UserError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.num_draft_tokens < 1:
            raise UserError(f"num_draft_tokens must be >= 1, got {self.num_draft_tokens}")
        if self.token_healing and (self.num_beams > 1 or self.draft_model):
            raise UserError("token_healing works with greedy decoding and sampling: drop num_beams / draft_model")
        if self.token_healing and (self.json_schema or self.regex):
            raise UserError("structured output (json_schema, regex) cannot be combined with token_healing; drop one")
        if self.draft_model and (self.num_beams > 1 or self.num_return_sequences > 1):
            raise UserError("speculative decoding (draft_model) produces one sequence: use num_beams=1 and num_return_sequences=1")

    def sampling_params(self, **changes) -> SamplingParams:
        """The request's own controls (with ``changes``), for the engine."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingParams)}
        return SamplingParams(**{**values, **changes})


@dataclass
class EngineConfig:
    """How the decoding engine runs (arlm/generate/engine.py), apart from any one request's controls."""

    max_batch: int = _f(16, "sequences decoded together at most (KV-cache slots); more requests wait for a free slot")
    max_len: int = _f(0, "positions each slot's KV cache holds (0: the model's context window); longer sequences slide it")
    prefill_chunk: int = _f(64, "prompts are run in chunks of this many tokens, the unit of prefix caching")
    max_prefill_tokens: int = _f(64, "prompt tokens run per step at most (at least one chunk; 0: every waiting "
                                     "prompt at once), so a long prompt does not stall the streams decoding")
    prefix_cache_mb: int = _f(512, "memory for the keys/values of prompt prefixes seen before (0: no prefix caching)")
    compile: bool = _f(GenerateConfig.compile, "compile the decode step with torch.compile (slow first call, faster tokens)")
    use_cache: bool = _f(GenerateConfig.use_cache, "keep keys/values between steps (off recomputes each window: a test oracle)")

    def validate(self) -> None:
        for name in ("max_batch", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_len", "prefix_cache_mb", "max_prefill_tokens"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class ServeConfig(EngineConfig):
    """``arlm serve``: the engine's options and the server's own (address, key, limits)."""

    host: str = _f("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    port: int = _f(8000, "TCP port (0: any free port, printed at start)")
    api_key: str = _f("", "require 'Authorization: Bearer KEY' on every /v1 route (default: the ARLM_API_KEY "
                          "environment variable; empty: no key)", metavar="KEY")
    model_name: str = _f("", "the model's name in /v1/models and responses (default: its folder's name)")
    max_queue: int = _f(64, "requests waiting for a slot at most; more get 429 Too Many Requests")
    max_tokens: int = _f(4096, "largest max_tokens a request may ask for")
    max_n: int = _f(8, "largest n (choices per request) a request may ask for")
    max_prompt_tokens: int = _f(0, "longest prompt in tokens (0: the model's context window)")
    max_body_kb: int = _f(1024, "largest request body in KiB")
    chat_template: str = _f("", "Jinja chat template (text or file) for /v1/chat/completions (default: the model's)",
                            metavar="TEXT|FILE")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be between 0 and 65535, got {self.port}")
        for name in ("max_queue", "max_tokens", "max_n", "max_body_kb"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_prompt_tokens < 0:
            raise UserError(f"max_prompt_tokens must be >= 0 (0: the context window), got {self.max_prompt_tokens}")
        if self.max_n > self.max_batch:
            raise UserError(f"max_n ({self.max_n}) cannot exceed max_batch ({self.max_batch}): a request's choices "
                            f"decode together")
        if any(c.isspace() for c in self.api_key):
            raise UserError("api_key must not contain spaces")


@dataclass
class LoadConfig:
    """How a model is loaded for inference: ``arlm generate``, ``chat``, ``eval`` and ``arlm.load``."""

    model: str = _f("", "checkpoint, training output or Hugging Face folder", metavar="DIR")
    device: str = _f(DEFAULT_DEVICE, DEVICE_HELP)
    precision: str = _f("float32", "weights for decoding: float32, bfloat16, int8 (weight-only, per-channel scales), "
                                   "or auto (bfloat16 on GPUs that support it)", choices=PRECISIONS)

    def validate(self) -> None:
        if not self.model:
            raise UserError("no model given: add --model DIR")


@dataclass
class EvalConfig:
    """Options of ``arlm eval`` (beside the model's LoadConfig and, for tasks, the GenerateConfig options
    in ``EVAL_TASK_OPTIONS`` with the defaults of ``EVAL_TASK_DEFAULTS``)."""

    data: str = _f("", "UTF-8 text file to score (loss, perplexity, bits per character)", metavar="FILE")
    task: str = _f("", "instead of --data: a JSONL file of {prompt, reference}; generate for each prompt (greedy, or "
                       "beam search with --num-beams or where the model's generation defaults ask for it) and score "
                       "the outputs with --metric; for a model with a task head, its task's labelled JSONL, scored "
                       "with the task's metrics (docs/tasks.md)", metavar="FILE.jsonl")
    metric: str = _f("bleu", "task metric: corpus BLEU or chrF (sacrebleu), ROUGE-1/2/L F1 (rouge-score), exact match",
                     choices=("bleu", "chrf", "rouge", "exact"))
    predictions_out: str = _f("", "task: write one JSON line per example with prompt, prediction and reference", metavar="FILE")
    overwrite: bool = _f(False, "task: replace a file at --predictions-out that is not an earlier predictions file "
                                "(one of those is replaced anyway)")
    chat: bool = _f(False, "task: send each prompt as a user message through the model's chat template")
    batch_size: int = _f(8, "windows per forward pass (task: prompts generated together)")
    stride: int = _f(0, "0: non-overlapping windows; S: slide a full window by S tokens, scoring only the "
                        "new ones (Hugging Face's sliding-window perplexity: more context per token, slower)")
    errors: str = _f("strict", "what to do with bytes that are not UTF-8 in --data, and with text that is not valid "
                               "Unicode in --task: stop with an error, or replace it with U+FFFD", choices=("strict", "replace"))
    few_shot: int = _f(0, "task: put K demonstrations (prompt, answer) from the file's other examples before each "
                          "prompt, laid out and drawn as lm-evaluation-harness does; a file of {prompt, choices, "
                          "answer} is scored by each choice's log-likelihood (acc, acc_norm)", metavar="K")
    few_shot_seed: int = _f(1234, "task: seed of the demonstrations' draw (1234: lm-evaluation-harness's default)")

    def validate(self) -> None:
        if self.few_shot and not self.task:
            raise UserError("--few-shot applies to --task evaluation")
        if not 0 <= self.few_shot <= 256:
            raise UserError(f"--few-shot must be from 0 to 256, got {self.few_shot}")
        if bool(self.data) == bool(self.task):
            raise UserError("give --data FILE (a text to score) or --task FILE.jsonl (prompts and references), not both"
                            if self.data else "nothing to evaluate: add --data FILE (a text) or --task FILE.jsonl")
        if self.batch_size <= 0:
            raise UserError(f"batch_size must be positive, got {self.batch_size}")
        if self.stride < 0:
            raise UserError(f"stride must be >= 0 (0: non-overlapping windows), got {self.stride}")
        if self.predictions_out and not self.task:
            raise UserError("--predictions-out applies to --task evaluation")


@dataclass
class EmbedConfig:
    """Options of ``arlm embed``: a vector per text from a model's hidden states, and the groups found in them."""

    input: str = _f("", "the texts: a JSONL file (one object per line, the text under --field) or a UTF-8 text file "
                        "(one text per non-empty line)", metavar="FILE")
    out: str = _f("", "write the vectors to FILE.npy (float32, a row per text) or FILE.parquet (text, label, cluster, "
                      "topic and embedding columns); optional with --clusters or --topics", metavar="FILE")
    field: str = _f("text", "JSONL key holding each text")
    label_field: str = _f("label", "JSONL key of each text's known class, if the records have it: the groups found "
                                   "are scored against it (adjusted Rand index, NMI)")
    pooling: str = _f("mean", "one vector per text: the mean of its tokens' final hidden states, or the last token's "
                              "(what a causal model computes having read the whole text)", choices=("mean", "last"))
    clusters: int = _f(0, "k-means (scikit-learn) on the L2-normalised vectors, K clusters (0: none)", metavar="K")
    topics: int = _f(0, "LDA topics (scikit-learn) on the texts' word counts, K topics (0: none)", metavar="K")
    batch_size: int = _f(16, "texts per forward pass")
    seed: int = _f(0, "seed of k-means and LDA")
    max_texts: int = _f(200_000, "refuse an input with more texts than this (every vector is held in memory)")
    overwrite: bool = _f(False, "replace an existing --out file of the same kind that arlm did not write")

    def validate(self) -> None:
        if not self.input:
            raise UserError("nothing to embed: add --input FILE (JSONL or one text per line)")
        if not (self.out or self.clusters or self.topics):
            raise UserError("nothing to do: add --out FILE.npy|FILE.parquet, --clusters K or --topics K")
        if self.out and Path(self.out).suffix.lower() not in (".npy", ".parquet"):
            raise UserError(f"--out {self.out}: the vectors are written as .npy or .parquet; name the file so")
        for name, value, top in (("clusters", self.clusters, 10_000), ("topics", self.topics, 1_000)):
            if value == 1 or not 0 <= value <= top:
                raise UserError(f"--{name} must be 0 (none) or from 2 to {top:,}, got {value}")
        if self.batch_size <= 0 or self.max_texts <= 0:
            raise UserError("--batch-size and --max-texts must be positive")
        if not self.field or not self.label_field:
            raise UserError("--field and --label-field must name JSONL keys")


@dataclass
class BiasProbeConfig:
    """Options of ``arlm probe bias``: counterfactual pairs of group terms in templates (arlm/eval/fairness.py)."""

    templates: str = _f("data/probes/templates.txt", "text file of templates, one per line, {} where the group term "
                                                     "goes (# starts a comment)", metavar="FILE")
    pairs: str = _f("data/probes/gender_pairs.tsv", "tab-separated pairs of group terms, one pair per line, after a "
                                                     "header line naming the two groups", metavar="FILE.tsv")
    plot: str = _f("", "also draw the per-template gaps and the mean's 95 percent interval as a PNG", metavar="FILE.png")
    out: str = _f("", "write every pair's gaps as JSON Lines", metavar="FILE.jsonl")
    seed: int = _f(0, "seed of the bootstrap interval")
    batch_size: int = _f(16, "sentences per forward pass")

    def validate(self) -> None:
        if self.plot and not self.plot.lower().endswith(".png"):
            raise UserError(f"--plot {self.plot}: the plot is a PNG; name it FILE.png")
        if self.out and not self.out.lower().endswith(".jsonl"):
            raise UserError(f"--out {self.out}: the gaps are written as JSON Lines; name the file FILE.jsonl")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {self.batch_size}")


@dataclass
class GroupProbeConfig:
    """Options of ``arlm probe groups``: a classifier's metrics per group of a sensitive feature (fairlearn)."""

    task: str = _f("", "labelled JSONL of the classifier's task ({text, label}) whose records also carry the "
                       "sensitive feature", metavar="FILE.jsonl")
    group_field: str = _f("group", "JSONL key of each record's group (the sensitive feature)")
    positive: str = _f("", "the label counted as selected (selection rate, demographic parity, equalized odds)")
    batch_size: int = _f(16, "texts per forward pass")

    def validate(self) -> None:
        if not self.task:
            raise UserError("nothing to probe: add --task FILE.jsonl (labelled texts with a group each)")
        if not self.positive:
            raise UserError("add --positive LABEL: the label whose rate is compared between groups")


# `arlm eval --task`: the decoding options it takes, and their defaults there (greedy, shorter answers).
EVAL_TASK_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                     "no_repeat_ngram_size", "stop", "seed", "token_healing", "num_beams", "length_penalty",
                     "early_stopping", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id")
EVAL_TASK_DEFAULTS: dict[str, Any] = dict(temperature=0.0, max_new_tokens=128)


@dataclass
class ConvertConfig:
    """Options of ``arlm convert``: Hugging Face folder <-> arlm checkpoint."""

    from_hf: str = _f("", "Hugging Face model folder (GPT-2, Llama, Mistral, Qwen2) to turn into an arlm checkpoint", metavar="DIR")
    to_hf: str = _f("", "arlm checkpoint or training output folder to write as a Hugging Face folder", metavar="DIR")
    out: str = _f("", "output folder", metavar="DIR")
    overwrite: bool = _f(False, "replace --out if it already exists (it must not be, contain or lie inside the source)")

    def validate(self) -> None:
        if bool(self.from_hf) == bool(self.to_hf):
            raise UserError("give exactly one of --from-hf DIR or --to-hf DIR")
        if not self.out:
            raise UserError("no output folder given: add --out DIR")


@dataclass
class CompressReportConfig:
    """The original-vs-result table every ``arlm compress`` command ends with."""

    data: str = _f("", "validation text for the perplexity column: a prepared data folder (its val split) or a UTF-8 "
                       "text file (empty: no perplexity)", metavar="DIR|FILE")
    eval_tokens: int = _f(65536, "validation tokens scored per model (0: all)")
    decode_tokens: int = _f(64, "new tokens per decoding measurement, batch 1 and batch 8 (0: skip the speed columns)")
    baseline: bool = _f(True, "also a baseline row: quantize: PyTorch's dynamic int8 (torch.ao quantize_dynamic, not "
                              "saved); distill: the same student trained as long from scratch, without the teacher")

    def validate(self) -> None:
        if self.eval_tokens < 0:
            raise UserError(f"--eval-tokens must be >= 0 (0: all), got {self.eval_tokens}")
        if not 0 <= self.decode_tokens <= 4096:
            raise UserError(f"--decode-tokens must be between 0 and 4096, got {self.decode_tokens}")


def _need_model_and_out(cfg) -> None:
    """The two folders every compress command needs."""
    if not cfg.model:
        raise UserError("no model given: add --model DIR")
    if not cfg.out:
        raise UserError("no output folder given: add --out DIR")


@dataclass
class QuantizeConfig:
    """Options of ``arlm compress quantize``: weight-only int8 or int4, written as a checkpoint every verb loads."""

    model: str = _f("", "float model to quantize: arlm checkpoint, training output or Hugging Face folder", metavar="DIR")
    out: str = _f("", "folder for the quantized checkpoint", metavar="DIR")
    method: str = _f("int4", "int8: one scale per output channel; int4: 4-bit codes with a float16 scale per group",
                     choices=("int8", "int4"))
    group_size: int = _f(32, "int4: weights per scale along each input row (32 is llama.cpp's Q4_0 block)",
                         choices=(32, 64, 128))
    asymmetric: bool = _f(False, "int4: a float16 offset per group besides its scale (min-max codes; default: "
                                 "symmetric, Q4_0's rule)")
    overwrite: bool = _f(False, "replace --out if it already exists (it must not be, contain or lie inside --model)")

    def validate(self) -> None:
        _need_model_and_out(self)
        if self.method == "int8" and self.asymmetric:
            raise UserError("--asymmetric is an int4 option (int8 is symmetric, one scale per output channel)")


@dataclass
class PruneConfig:
    """Options of ``arlm compress prune`` (its --data, a prepared folder, also gives the calibration and recovery text)."""

    model: str = _f("", "float model to prune: arlm checkpoint, training output or Hugging Face folder", metavar="DIR")
    out: str = _f("", "folder for the pruned checkpoint", metavar="DIR")
    method: str = _f("magnitude", "magnitude: zero the smallest weights; wanda: |weight| x input norm (Sun et al. "
                                  "2023); heads / neurons: remove whole attention heads / MLP units (smaller matrices)",
                     choices=("magnitude", "wanda", "heads", "neurons"))
    amount: float = _f(0.3, "fraction to remove: of the blocks' linear weights (magnitude, wanda), of each layer's "
                            "heads or MLP units (heads, neurons)")
    calibration_batches: int = _f(16, "wanda, heads, neurons: batches of 8 training windows the importance is measured on")
    recover_steps: int = _f(0, "then fine-tune this many steps on --data through the training loop (pruned weights "
                               "stay zero)")
    recover_lr: float = _f(3e-4, "learning rate of the recovery fine-tune")
    recover_batch_size: int = _f(8, "batch size of the recovery fine-tune")
    overwrite: bool = _f(False, "replace --out if it already exists (it must not be, contain or lie inside --model)")

    def validate(self) -> None:
        _need_model_and_out(self)
        if not 0 < self.amount < 1 or not math.isfinite(self.amount):
            raise UserError(f"--amount must be a fraction between 0 and 1, got {self.amount}")
        if not 1 <= self.calibration_batches <= 10_000:
            raise UserError(f"--calibration-batches must be between 1 and 10000, got {self.calibration_batches}")
        if self.recover_steps < 0:
            raise UserError(f"--recover-steps must be >= 0, got {self.recover_steps}")
        if not 0 < self.recover_lr < 1 or not math.isfinite(self.recover_lr):
            raise UserError(f"--recover-lr must be between 0 and 1, got {self.recover_lr}")
        if not 1 <= self.recover_batch_size <= 4096:
            raise UserError(f"--recover-batch-size must be between 1 and 4096, got {self.recover_batch_size}")


@dataclass
class DistillConfig:
    """Options of ``arlm compress distill`` besides the training ones (the student's shape: the teacher's with
    half its layers, changed by model flags or the [model] table of --student-config)."""

    teacher: str = _f("", "the trained model to distill (arlm checkpoint, training output or Hugging Face folder)",
                      metavar="DIR")
    student_config: str = _f("", "TOML file of training keys whose [model] table shapes the student (default: the "
                                 "teacher's shape with half its layers)", metavar="FILE.toml")
    init: str = _f("auto", "student's start: teacher-layers (DistilGPT2's: embeddings, output and every other block "
                           "copied; needs the teacher's width), random, or auto (teacher-layers where the shapes allow)",
                   choices=("auto", "teacher-layers", "random"))

    def validate(self) -> None:
        if not self.teacher:
            raise UserError("no teacher given: add --teacher DIR")


@dataclass
class ExportConfig:
    """Options of ``arlm export``: a model as a file or folder another engine runs."""

    model: str = _f("", "arlm checkpoint, training output or Hugging Face folder (a float model)", metavar="DIR")
    out: str = _f("", "output: a .gguf or .onnx file, or a folder (hf)", metavar="PATH")
    format: str = _f("gguf", "gguf: one file for llama.cpp (GPT-2 or Llama layout); onnx: the model with its KV cache "
                             "as inputs and outputs, for ONNX Runtime; hf: a transformers folder (as `arlm convert "
                             "--to-hf`)", choices=("gguf", "onnx", "hf"))
    gguf_type: str = _f("f16", "gguf: weight type: f32, f16, or llama.cpp's block formats q8_0 (8-bit) and q4_0 "
                               "(4-bit), each block of 32 with a float16 scale", choices=("f32", "f16", "q8_0", "q4_0"))
    overwrite: bool = _f(False, "replace --out if it already exists")

    def validate(self) -> None:
        _need_model_and_out(self)


MAX_ABLATION_TOKENS = 1_000_000  # `inspect heads` runs n_layer x n_head + 1 passes over its tokens


@dataclass
class InspectConfig:
    """Options of ``arlm inspect attention|tokens|lens|heads`` (beside the model's LoadConfig)."""

    text: str = _f("", "attention, tokens, lens: the text to look at (at most the model's context)")
    data: str = _f("", "heads: a UTF-8 text file the loss is measured on", metavar="FILE")
    out: str = _f("", "attention, heads: the PNG to write", metavar="FILE.png")
    layer: int = _f(-1, "attention: only this layer (-1: all)")
    head: int = _f(-1, "attention: only this head (-1: all)")
    top: int = _f(5, "tokens, lens: alternatives shown per position")
    threshold: float = _f(0.01, "tokens: flag a token as surprising when the model gave it less than this probability")
    max_tokens: int = _f(8192, f"heads: tokens of --data used (0: all, up to {MAX_ABLATION_TOKENS:,}; each head's "
                               f"ablation runs over all of them)")
    overwrite: bool = _f(False, "attention, heads: replace a PNG at --out that this command did not write (its own "
                                "earlier plot is replaced anyway; a file that is not a PNG never is)")

    def validate(self) -> None:
        if not 1 <= self.top <= 100:
            raise UserError(f"--top must be between 1 and 100, got {self.top}")
        if not 0 <= self.threshold <= 1 or not math.isfinite(self.threshold):
            raise UserError(f"--threshold must be a probability between 0 and 1, got {self.threshold}")
        if self.layer < -1 or self.head < -1:
            raise UserError("--layer and --head are indices from 0 (-1: all)")
        if not 0 <= self.max_tokens <= MAX_ABLATION_TOKENS:
            raise UserError(f"--max-tokens must be between 0 (all) and {MAX_ABLATION_TOKENS:,}, got {self.max_tokens}")


# `arlm chat`: decoding defaults under the model's own and the flags given. Sampling (not greedy,
# which loops on small models) with a moderate temperature and nucleus, as chat front-ends do.
CHAT_DEFAULTS: dict[str, Any] = dict(temperature=0.8, top_p=0.95)


# ----------------------------------------------------------------------------------------------
# reading configs from dicts / TOML, with errors that name the bad key


_UNION_TYPES = (typing.Union, types.UnionType)  # Optional[X] and X | None


def field_types(cls) -> dict[str, Any]:
    """Resolved type hints of a config dataclass (annotations are strings under __future__)."""
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        inner = typing.get_args(tp)[0]
        inner = typing.get_origin(inner) or inner
        return "a list of " + {int: "integers", float: "numbers", str: "strings", bool: "true/false values",
                               dict: "tables of keys"}.get(inner, "values")
    if origin is dict:
        return "a table of keys"
    if origin in _UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + (" (or omitted)" if len(args) < len(typing.get_args(tp)) else "")
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _model_union(tp) -> bool:
    """A field typed as one of the model configs (TrainConfig.model)."""
    args = typing.get_args(tp) if typing.get_origin(tp) in _UNION_TYPES else ()
    return bool(args) and all(isinstance(a, type) and issubclass(a, ModelConfig) for a in args)


def _show(value) -> str:
    """A value as an error message quotes it: its type and repr, cut short."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def coerce(tp, value, where: str):
    """Check ``value`` against the field type ``tp``; ints are accepted for floats, which must be
    finite. Raises UserError naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in _UNION_TYPES:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) == 1:  # X | None: X's own, more precise, message
            return coerce(args[0], value, where)
        for a in args:
            try:
                return coerce(a, value, where)
            except UserError:
                if a is args[-1]:
                    raise UserError(f"{where} must be {_type_name(tp)}, got {_show(value)}") from None
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where} must be {_type_name(tp)}, got {_show(value)}")
        return [coerce(inner, v, where) for v in value]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise UserError(f"{where} must be {_type_name(tp)}, got {_show(value)}")
        return {coerce(key_tp, k, where): coerce(value_tp, v, f"{where} [{k}]") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 1 << 1000 else math.inf  # float() of a larger int raises
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise UserError(f"{where} must be {_type_name(tp)}, got {_show(value)}")
    if tp is float and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value}")
    return value


def _check_choice(f: dataclasses.Field, value, where: str) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{where} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def from_dict(cls, data: dict[str, Any], source: str = "config", unknown: str = "error"):
    """Build config ``cls`` from a (possibly nested) dict, checking what a flag would be checked for:
    types, allowed values (a field's ``choices``), finite numbers, required keys; unknown keys are
    an error (``unknown="ignore"``: skipped, for files of other programs)."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a table of keys (a JSON object / TOML table), got {type(data).__name__}")
    types = field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            if unknown == "ignore":
                continue
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "valid keys are: " + ", ".join(sorted(fields))
            raise UserError(f"unknown config key '{key}' in {source}; {hint}")
        tp, where = types[key], f"config key '{key}' in {source}"
        if _model_union(tp):
            kwargs[key] = model_config(value, f"{source} [{key}]")
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{source} [{key}]", unknown)
        else:
            kwargs[key] = coerce(tp, value, where)
            _check_choice(fields[key], kwargs[key], where)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{source}: required key '{name}' is missing")
    return cls(**kwargs)


def model_config(data: Any, source: str = "model config") -> ModelConfig:
    """The model config its ``type`` names (``gpt`` when absent), from a dict; keys that belong to
    another model type are named as such."""
    if isinstance(data, ModelConfig):
        return data
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a table of model keys, got {type(data).__name__}")
    kind = data.get("type", "gpt")
    if not isinstance(kind, str) or kind not in MODEL_CONFIGS:
        raise UserError(f"config key 'type' in {source} must be one of {', '.join(map(repr, MODEL_CONFIGS))}, got {kind!r}")
    cls = MODEL_CONFIGS[kind]
    own = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        other = [t for t, c in MODEL_CONFIGS.items() if t != kind and key in {f.name for f in dataclasses.fields(c)}]
        if key not in own and other:
            raise UserError(f"model key '{key}' in {source} does not apply to {kind} models (it is a {other[0]} key); "
                            f"remove it")
    return from_dict(cls, data, source)


def validated(cls, data: dict[str, Any], source: str, unknown: str = "error", name_source: bool = True):
    """:func:`from_dict` then the class's own ``validate()``; with ``name_source`` its errors start with
    ``source`` (a file's path), so a damaged file is named."""
    cfg = from_dict(cls, data, source, unknown)
    try:
        cfg.validate()
    except UserError as e:
        if not name_source:
            raise
        raise UserError(f"{source}: {e}") from None
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``overrides`` on ``base`` (new dict; inputs untouched)."""
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_preset(d: dict[str, Any]) -> dict[str, Any]:
    """Expand ``preset`` into the ``model`` table; explicit model keys win over the preset."""
    name = d.get("preset") or ""
    if not name:
        return d
    if not isinstance(name, str) or name not in MODEL_PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    model = d.get("model", {})
    if not isinstance(model, dict):
        return d  # from_dict names the bad table
    if model.get("type", "gpt") != "gpt":
        raise UserError(f"preset '{name}' is a GPT shape; drop it to train a {model.get('type')!r} model")
    return merge(d, {"model": merge(MODEL_PRESETS[name], model)})
