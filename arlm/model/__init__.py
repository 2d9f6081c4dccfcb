"""Model definitions. ``GPT`` is the decoder-only Transformer; ``KVCache`` holds past keys/values."""

from arlm.model.gpt import GPT
from arlm.model.layers import KVCache

__all__ = ["GPT", "KVCache"]
