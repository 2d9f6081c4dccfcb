"""Model definitions. ``GPT`` is the decoder-only Transformer, ``LSTMLM`` the recurrent baseline;
``KVCache`` holds past keys/values; :mod:`arlm.model.registry` maps a config's ``type`` to its class."""

from arlm.model.gpt import GPT
from arlm.model.layers import KVCache
from arlm.model.lstm import LSTMLM
from arlm.model.registry import build_model, empty_model

__all__ = ["GPT", "KVCache", "LSTMLM", "build_model", "empty_model"]
