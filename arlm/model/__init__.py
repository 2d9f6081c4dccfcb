"""Model definitions. ``GPT`` is the decoder-only Transformer, ``LSTMLM`` the recurrent baseline;
``KVCache`` holds past keys/values."""

from arlm.config import GPTConfig
from arlm.model.gpt import GPT
from arlm.model.layers import KVCache
from arlm.model.lstm import LSTMLM

__all__ = ["GPT", "KVCache", "LSTMLM", "build_model"]


def build_model(cfg: GPTConfig) -> GPT | LSTMLM:
    """The model ``cfg.type`` names (randomly initialised, on the current default device)."""
    return LSTMLM(cfg) if cfg.type == "lstm" else GPT(cfg)
