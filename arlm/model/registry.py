"""The model types arlm knows: ``type`` -> config class + model class, and the contract every model
keeps, so that the rest of arlm asks a model what it can do instead of checking its type by name.

To add a model type: a config class in arlm/config.py (``MODEL_CONFIGS``), a model class with the
methods and capability flags of :class:`LanguageModule`, and an entry in ``REGISTRY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from arlm.config import MODEL_CONFIGS, EncoderConfig, GPTConfig, LSTMConfig, ModelConfig, Seq2SeqConfig
from arlm.model.encoder import MaskedLM
from arlm.model.gpt import GPT
from arlm.model.lstm import LSTMLM
from arlm.model.seq2seq import EncoderDecoder


class LanguageModule(Protocol):
    """What the training loop, decoding, evaluation and checkpoints use of a model."""

    config: ModelConfig
    # capabilities
    is_encoder_decoder: ClassVar[bool]  # reads a source with an encoder (forward takes src=; decoding primes the cache)
    can_rewind_cache: ClassVar[bool]  # its cache is addressed by position: cut back (speculative decoding), shared (prefix caching)
    can_compile_decode: ClassVar[bool]  # its one-token decode step can be compiled over a fixed-shape cache
    can_checkpoint_activations: ClassVar[bool]  # recompute activations in backward (``checkpointing`` attribute)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None,
                input_pos: torch.Tensor | None = None, kv_len: int | None = None, last_only: bool = False,
                key_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def new_cache(self, rows: int, max_len: int | None = None):
        """A decoding cache of ``rows`` sequences (``view``, ``copy_row``, ``reorder``; see KVCache)."""

    def cache_bytes(self, batch_size: int, max_len: int) -> int:
        """Memory the decoding cache of ``batch_size`` rows and ``max_len`` positions takes."""

    def num_params(self, non_embedding: bool = True) -> int: ...

    @staticmethod
    def parameter_count(cfg: ModelConfig) -> int:
        """Parameters of a model of ``cfg`` (tied weights once), computed from the config without building it."""

    def init_buffers(self) -> None: ...

    def attention_flops_per_token(self) -> float:
        """Training FLOPs per token outside the weight matrices (a Transformer's attention; 0 for an LSTM)."""


@dataclass(frozen=True)
class ModelType:
    name: str
    config: type[ModelConfig]
    model: type[nn.Module]


REGISTRY: dict[str, ModelType] = {
    "gpt": ModelType("gpt", GPTConfig, GPT),
    "lstm": ModelType("lstm", LSTMConfig, LSTMLM),
    "seq2seq": ModelType("seq2seq", Seq2SeqConfig, EncoderDecoder),
    "encoder": ModelType("encoder", EncoderConfig, MaskedLM),
}
assert {k: v.config for k, v in REGISTRY.items()} == MODEL_CONFIGS, "arlm/config.py and the registry disagree"


def model_type(cfg: ModelConfig) -> ModelType:
    return REGISTRY[cfg.type]


def parameter_count(cfg: ModelConfig) -> int:
    return model_type(cfg).model.parameter_count(cfg)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model ``cfg.type`` names (randomly initialised, on the current default device)."""
    return model_type(cfg).model(cfg)


def empty_model(cfg: ModelConfig) -> nn.Module:
    """A model with no memory behind its weights yet (meta device): loading skips random initialisation,
    and an absurd config allocates nothing."""
    with torch.device("meta"):
        return build_model(cfg)
