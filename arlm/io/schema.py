"""A typed, validated dataclass for each metadata file arlm reads, built like the configs of
arlm/config.py (:func:`arlm.config.validated`: types, allowed values, finite numbers, required keys,
then each class's ``validate``). A damaged or hand-edited file gives one line naming the file, the
key, what was found and what is expected.

=========================  ==================================  ==================================
file                       written by                          class
=========================  ==================================  ==================================
meta.json                  ``arlm prepare``                    :class:`DataMeta`
config.json (arlm)         checkpoints                         :class:`CheckpointInfo`
config.json (HF)           transformers                        :class:`HFConfig` (unknown keys ignored)
generation_config.json     transformers                        :class:`HFGenerationConfig`
tokenizer_config.json      transformers / arlm's export        :class:`HFTokenizerConfig`
tokenizer.json (char)      arlm's character tokenizer          :class:`CharVocabulary`
tokenizer.json (pixels)    ``arlm image prepare``              :class:`PixelVocabulary`
tokenizer.json (mulaw)     ``arlm audio prepare``              :class:`MuLawSpec`
tokenizer.json (series)    the neural forecaster               :class:`SeriesBins`
*.index.json               sharded Hugging Face weights        :class:`ShardIndex`
=========================  ==================================  ==================================

(BPE tokenizer.json files are read by the ``tokenizers`` library, whose errors are caught where it
is called; trainer_state.pt is checked by the trainer's own state object.)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arlm.config import (GenerateConfig, ModelConfig, TrainConfig, from_dict, model_config, to_dict, validated)
from arlm.errors import UserError
from arlm.io.files import read_json


def _choice(default, *choices):
    return field(default=default, metadata={"choices": choices})


def _list():
    return field(default_factory=list)


# -- meta.json ------------------------------------------------------------------------------------


@dataclass
class DataMeta:
    """A prepared data folder's meta.json: the token shards' sizes and format, and where they came from."""

    vocab_size: int
    train_tokens: int
    val_tokens: int
    dtype: str = _choice("uint16", "uint16", "uint32")
    format: int = 1
    tokenizer: str = ""
    eot_id: int | None = None
    documents: int = 0
    characters: int = 0
    val_fraction: float = 0.1
    split: str = "tail"
    sources: list[str] = _list()
    control: str = ""
    controls: list[str] = _list()
    modality: str = _choice("text", "text", "image", "audio", "series")
    record_tokens: int = 0  # fixed-length records (an image each): training windows start at their boundaries
    shifted_copies: int = 0  # images: each training image is followed by this many shifted copies of it
    context_length: int = 0  # series: the values before the forecast in each record (they set its scale)
    prediction_length: int = 0  # series: the values after them
    val_series: list[str] = _list()  # series: the real series held out whole for validation (never trained on)

    def validate(self) -> None:
        for name in ("record_tokens", "shifted_copies", "context_length", "prediction_length"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.vocab_size <= 0:
            raise UserError(f"vocab_size must be positive, got {self.vocab_size}")
        for name in ("train_tokens", "val_tokens"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eot_id is not None and not 0 <= self.eot_id < self.vocab_size:
            raise UserError(f"eot_id {self.eot_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.vocab_size > (1 << 16) and self.dtype == "uint16":
            raise UserError(f"a vocabulary of {self.vocab_size} ids does not fit dtype uint16")


def read_data_meta(path: str | Path, fix: str) -> DataMeta:
    return validated(DataMeta, read_json(path, fix), str(path))


# -- config.json of an arlm checkpoint --------------------------------------------------------------


@dataclass
class LoraInfo:
    """The adapters a LoRA checkpoint holds (arlm/model/lora.py)."""

    rank: int
    alpha: float
    targets: list[str]
    dropout: float = 0.0
    base: str | None = None
    adapter_only: bool = False

    def validate(self) -> None:
        if self.rank <= 0 or self.alpha <= 0 or not self.targets:
            raise UserError(f"needs rank > 0, alpha > 0 and some targets (got rank {self.rank}, alpha {self.alpha}, "
                            f"targets {self.targets})")
        if self.adapter_only and not self.base:
            raise UserError("adapter_only checkpoints need the path of their base model ('base')")


@dataclass
class HeadInfo:
    """The task head a checkpoint carries in place of its output layer (arlm/model/heads.py)."""

    task: str = _choice("classify", "classify", "ner", "qa")
    labels: list[str] = _list()  # the head's outputs, in order (qa: none)
    dropout: float = 0.1  # before a token classifier (transformers' classifier_dropout)

    def validate(self) -> None:
        if self.task == "qa" and self.labels:
            raise UserError("a question-answering head has no labels (its outputs are start and end)")
        if self.task != "qa" and len(self.labels) < 2:
            raise UserError(f"a {self.task} head needs at least 2 labels, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels) or not all(isinstance(x, str) and x for x in self.labels):
            raise UserError("labels must be distinct, non-empty names")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class QuantInfo:
    """How a compressed checkpoint's weights are stored (arlm/compress/quantize.py): the method of every
    linear layer and of the token embedding, its group size and whether offsets are stored."""

    method: str = _choice("int8", "int8", "int4")
    group_size: int = 0  # int4: weights per scale along the input dimension (int8: one scale per output channel)
    symmetric: bool = True  # int4: codes centred on zero (no offsets stored)

    def validate(self) -> None:
        if self.method == "int4" and self.group_size not in (32, 64, 128):
            raise UserError(f"int4 needs group_size 32, 64 or 128, got {self.group_size}")
        if self.method == "int8" and (self.group_size != 0 or not self.symmetric):
            raise UserError("int8 is symmetric with one scale per output channel: group_size 0, symmetric true")


@dataclass
class CheckpointInfo:
    """An arlm checkpoint's config.json: the model config, and what the checkpoint carries beside its
    weights (training config and progress, decoding defaults, end-of-sequence ids, chat template,
    adapters, where it came from)."""

    model: ModelConfig
    arlm_version: str = ""
    model_type: str = "gpt"
    train: TrainConfig | None = None
    step: int | None = None
    val_loss: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
    lora: LoraInfo | None = None
    head: HeadInfo | None = None
    quantization: QuantInfo | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    eos_token_ids: list[int] = _list()
    source: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    path: str = ""  # where it was loaded from (not saved)
    generation_source: str = ""  # the file the decoding defaults came from (not saved)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in to_dict(self).items() if k not in ("train", "path", "generation_source")}
        if self.train is not None:
            out["train"] = {k: v for k, v in to_dict(self.train).items() if k != "model"}
        return out


_CHECKPOINT_KEYS = {f.name: f for f in dataclasses.fields(CheckpointInfo)}


def checkpoint_info(data: Any, source: str) -> CheckpointInfo:
    """Validate a checkpoint's config.json contents (``source``: its path, for messages)."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a JSON object, found {type(data).__name__}")
    if "model" not in data:
        raise UserError(f"{source}: required key 'model' is missing; this is not an arlm checkpoint's config")
    model = validated_model(data["model"], f"{source} [model]", saved=True)
    if data.get("model_type", model.type) != model.type:
        raise UserError(f"config key 'model_type' in {source} must be one of {model.type!r} (the model table's type), "
                        f"got {data.get('model_type')!r}")
    plain = {k: v for k, v in data.items() if k not in ("model", "train", "lora", "head", "quantization", "generation")}
    info = from_dict(CheckpointInfo, {**plain, "model": {}}, source)  # the other keys' types (model: placeholder)
    info.model = model
    if data.get("train") is not None:
        if not isinstance(data["train"], dict):
            raise UserError(f"config key 'train' in {source} must be a table of keys, got {type(data['train']).__name__}")
        info.train = validated(TrainConfig, {**data["train"], "model": data["model"]}, f"{source} [train]")
    if data.get("lora") is not None:
        info.lora = validated(LoraInfo, data["lora"], f"{source} [lora]")
    if data.get("head") is not None:
        info.head = validated(HeadInfo, data["head"], f"{source} [head]")
        if model.type != "gpt":
            raise UserError(f"{source}: a task head goes on a gpt model, not {model.type}")
    if data.get("quantization") is not None:
        info.quantization = validated(QuantInfo, data["quantization"], f"{source} [quantization]")
        if info.head is not None:
            raise UserError(f"{source}: a checkpoint with a task head is not quantized")
        if info.lora is not None:
            raise UserError(f"{source}: a checkpoint is either quantized or LoRA adapters, not both")
    info.generation = generation_defaults(data.get("generation") or {}, f"'generation' in {source}")
    info.generation_source = f"{source} ('generation')"
    vocab = model.vocab_size
    bad = [i for i in info.eos_token_ids if not 0 <= i < vocab]
    if bad:
        raise UserError(f"config key 'eos_token_ids' in {source}: id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    controls = info.data.get("controls")
    if controls is not None and not (isinstance(controls, list) and all(isinstance(c, str) for c in controls)):
        raise UserError(f"config key 'data' in {source}: 'controls' must be a list of strings")
    return info


def validated_model(data: Any, source: str, saved: bool = False) -> ModelConfig:
    """A model config from a dict, validated; ``saved``: a saved model, whose vocabulary is known."""
    cfg = model_config(data, source)
    try:
        cfg.validate()
        if saved and cfg.vocab_size <= 0:
            raise UserError(f"model.vocab_size must be positive in a saved model, got {cfg.vocab_size}")
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return cfg


def generation_defaults(values: Any, source: str) -> dict[str, Any]:
    """Decoding defaults that come with a model, as GenerateConfig options of the right types. Their
    ranges are checked where they are used (:func:`check_generation_defaults`), so that a flag can
    override a bad one."""
    if not isinstance(values, dict):
        raise UserError(f"{source} must be a table of decoding options, got {type(values).__name__}")
    cfg = from_dict(GenerateConfig, values, source)
    return {name: getattr(cfg, name) for name in values}


def check_generation_defaults(defaults: dict[str, Any], given: dict[str, Any], source: str) -> None:
    """The model's decoding ``defaults`` that the options ``given`` do not override are each valid; a bad
    one names ``source`` (the file) and the flag that overrides it."""
    for name, value in defaults.items():
        if name in given:
            continue
        try:
            GenerateConfig(**{name: value}).validate()
        except UserError as e:
            raise UserError(f"{source}: {e} (fix the file, or override it with --{name.replace('_', '-')})") from None


# -- Hugging Face files ------------------------------------------------------------------------------


@dataclass
class HFConfig:
    """The keys of a transformers config.json that arlm reads (GPT-2 and Llama-family names; others ignored)."""

    model_type: str | None = None
    vocab_size: int | None = None
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool | None = None
    # GPT-2
    n_positions: int = 1024
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    # Llama family
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    use_sliding_window: bool = False
    max_window_layers: int = 0
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None
    rope_parameters: dict[str, Any] | None = None
    partial_rotary_factor: float | None = None

    def require(self, source: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) is None:
                raise UserError(f"{source}: required key '{name}' is missing")
        for name in names + ("n_positions", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, int) and value <= 0:
                raise UserError(f"config key '{name}' in {source} must be a positive integer, got {value}")

    def validate(self) -> None:
        for name in ("layer_norm_epsilon", "rms_norm_eps"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass
class HFSeq2SeqConfig:
    """The keys of an encoder-decoder's config.json that arlm reads: T5/MT5 names, then the BART family's
    (BART, mBART, Pegasus, Marian). Others are ignored."""

    model_type: str | None = None
    vocab_size: int | None = None
    d_model: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool | None = None
    # T5
    d_kv: int | None = None
    d_ff: int | None = None
    num_layers: int | None = None
    num_decoder_layers: int | None = None
    num_heads: int | None = None
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    n_positions: int | None = None
    scale_decoder_outputs: bool | None = None
    # BART, mBART, Pegasus, Marian
    encoder_layers: int | None = None
    decoder_layers: int | None = None
    encoder_attention_heads: int | None = None
    decoder_attention_heads: int | None = None
    encoder_ffn_dim: int | None = None
    decoder_ffn_dim: int | None = None
    max_position_embeddings: int | None = None
    activation_function: str = "gelu"
    scale_embedding: bool = False
    decoder_vocab_size: int | None = None
    share_encoder_decoder_embeddings: bool = True

    def require(self, source: str, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None:
                raise UserError(f"{source}: required key '{name}' is missing")
            if isinstance(value, int) and value <= 0:
                raise UserError(f"config key '{name}' in {source} must be a positive integer, got {value}")

    def validate(self) -> None:
        if not self.layer_norm_epsilon > 0:
            raise UserError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")
        for name in ("num_decoder_layers", "n_positions", "max_position_embeddings", "decoder_vocab_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value}")
        for name in ("pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name} must be a token id >= 0, got {value}")


def token_ids(value: Any, where: str) -> list[int]:
    """An id or a list of ids (eos_token_id), as a list; anything else is a UserError naming ``where``."""
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UserError(f"{where} must be a token id or a list of token ids, got {value!r}")
    return list(values)


@dataclass
class HFGenerationConfig:
    """The keys of a generation_config.json that arlm honours."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    max_new_tokens: int | None = None
    do_sample: bool | None = None
    bos_token_id: int | list[int] | None = None
    eos_token_id: int | list[int] | None = None
    # beam search and the encoder-decoders' usual settings (Marian: num_beams 4; BART-CNN: min_length 56)
    num_beams: int | None = None
    length_penalty: float | None = None
    early_stopping: bool | str | None = None
    min_new_tokens: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    decoder_start_token_id: int | None = None

    def validate(self) -> None:
        token_ids(self.eos_token_id, "eos_token_id")
        token_ids(self.forced_eos_token_id, "forced_eos_token_id")
        if self.early_stopping not in (None, True, False, "never"):
            raise UserError(f"early_stopping must be true, false or \"never\", got {self.early_stopping!r}")
        for name in ("max_length", "min_length", "decoder_start_token_id", "forced_bos_token_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name} must be >= 0, got {value}")

    def decoding(self, source: str, seq2seq: bool = False) -> dict[str, Any]:
        """GenerateConfig options: only values the file states (transformers' implicit top_k=50 is not);
        do_sample=false means greedy decoding (temperature 0). An encoder-decoder's max_length and
        min_length count the decoder's start token, so they are max_new_tokens and min_new_tokens + 1
        (a decoder-only model's count its prompt, which varies: they are not taken)."""
        keys = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size",
                "max_new_tokens", "num_beams", "length_penalty", "min_new_tokens", "forced_bos_token_id")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.do_sample is False:
            out["temperature"] = 0.0
        if self.early_stopping is not None:  # "never" is transformers' default bound, which arlm's False is
            out["early_stopping"] = self.early_stopping is True
        forced_eos = token_ids(self.forced_eos_token_id, "forced_eos_token_id")
        if forced_eos:
            out["forced_eos_token_id"] = forced_eos[0]
        if seq2seq and self.max_length is not None and "max_new_tokens" not in out:
            out["max_new_tokens"] = max(self.max_length - 1, 0)
        if seq2seq and self.min_length and "min_new_tokens" not in out:
            out["min_new_tokens"] = max(self.min_length - 1, 0)
        return generation_defaults(out, source)


@dataclass
class HFTokenizerConfig:
    """The keys of a tokenizer_config.json that arlm reads (others are kept and written back)."""

    eos_token: str | dict[str, Any] | None = None
    bos_token: str | dict[str, Any] | None = None
    chat_template: str | list[dict[str, Any]] | None = None

    def validate(self) -> None:
        for name in ("eos_token", "bos_token"):
            value = getattr(self, name)
            if isinstance(value, dict) and not isinstance(value.get("content"), str):
                raise UserError(f"{name} must be a token's text or {{\"content\": TEXT, ...}}, got {value!r}")
        if isinstance(self.chat_template, list) and not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
                for t in self.chat_template):
            raise UserError("chat_template must be a template or a list of {\"name\": ..., \"template\": ...}")


@dataclass
class CharVocabulary:
    """arlm's character tokenizer file: one id per character, in order."""

    chars: list[str]
    arlm: str = _choice("char", "char")
    version: int = 1
    eot: str = "<|endoftext|>"

    def validate(self) -> None:
        seen: set[str] = set()
        for c in self.chars:
            if len(c) != 1:
                raise UserError(f"every entry of 'chars' must be one character, found {c!r}")
            if c in seen:
                raise UserError(f"the character {c!r} appears twice in 'chars'")
            seen.add(c)


@dataclass
class PixelVocabulary:
    """arlm's pixel tokenizer file (arlm/tokenizers/image.py): the image size, the colours (grey levels or
    an RGB palette) and the class labels that may open an image."""

    height: int
    width: int
    arlm: str = _choice("pixels", "pixels")
    version: int = 1
    levels: int = 0  # grey levels (0: the palette's colours)
    max_value: int = 255  # the grey value of the brightest level
    palette: list[int] = _list()  # r, g, b of each colour, flattened
    classes: list[str] = _list()

    def validate(self) -> None:
        if not (1 <= self.height <= 4096 and 1 <= self.width <= 4096):
            raise UserError(f"height and width must be between 1 and 4096, got {self.height}x{self.width}")
        if (self.levels > 0) == bool(self.palette):
            raise UserError("give either 'levels' (grey levels) or a 'palette' (RGB colours), not both or neither")
        if self.levels and not 2 <= self.levels <= self.max_value + 1:
            raise UserError(f"levels must be between 2 and max_value + 1 = {self.max_value + 1}, got {self.levels}")
        if not 1 <= self.max_value <= 65535:
            raise UserError(f"max_value must be between 1 and 65535, got {self.max_value}")
        if len(self.palette) % 3 or len(self.palette) > 3 * 4096 or any(not 0 <= v <= 255 for v in self.palette):
            raise UserError("'palette' must hold r, g, b values in 0..255 for at most 4096 colours")
        if len(set(self.classes)) != len(self.classes) or any(not c for c in self.classes):
            raise UserError("'classes' must be distinct, non-empty names")


@dataclass
class MuLawSpec:
    """arlm's mu-law audio tokenizer file (arlm/tokenizers/audio.py)."""

    sample_rate: int
    arlm: str = _choice("mulaw", "mulaw")
    version: int = 1
    mu: int = 255

    def validate(self) -> None:
        if not 1000 <= self.sample_rate <= 192_000:
            raise UserError(f"sample_rate must be between 1000 and 192000 Hz, got {self.sample_rate}")
        if self.mu != 255:
            raise UserError(f"mu must be 255 (8-bit mu-law), got {self.mu}")


@dataclass
class SeriesBins:
    """arlm's time-series tokenizer file (arlm/tokenizers/series.py): Chronos' uniform bins of mean-scaled
    (or standardised) values."""

    bins: int = 4094
    limit: float = 15.0
    scaling: str = _choice("mean", "mean", "standard")
    arlm: str = _choice("scaled-bins", "scaled-bins")
    version: int = 1

    def validate(self) -> None:
        if not 2 <= self.bins <= 65_534:
            raise UserError(f"bins must be between 2 and 65534, got {self.bins}")
        if not 0 < self.limit <= 1e6:
            raise UserError(f"limit must be positive (the bins span -limit..limit), got {self.limit}")


@dataclass
class ShardIndex:
    """``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``: which file holds each tensor."""

    weight_map: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def shards(self, folder: Path, source: str) -> list[Path]:
        """The shard files, each named inside ``folder``: an index must not point elsewhere. The check is
        on the names (no absolute paths, no ``..`` out of the folder), not on where links lead, since
        Hugging Face's own cache keeps every file as a link into its ``blobs/`` folder."""
        out = []
        for name in sorted(set(self.weight_map.values())):
            p = folder / name
            inside = os.path.normpath(name)
            if Path(name).is_absolute() or inside == ".." or inside.startswith("../") or not name:
                raise UserError(f"{source} names the shard {name!r}, which is outside the model folder {folder}; "
                                f"an index may only name files inside its folder")
            out.append(p)
        return out

    def validate(self) -> None:
        pass
