"""Tokenizers behind one small protocol: ``encode``, ``decode``, ``vocab_size``, ``eot_id``, ``save``.

Two real implementations: :class:`CharTokenizer` (one id per Unicode character) and
:class:`BPETokenizer` (byte-level BPE from Hugging Face ``tokenizers``).
"""

from arlm.tokenizers.base import EOT, Tokenizer, load_tokenizer, train_tokenizer
from arlm.tokenizers.bpe import BPETokenizer
from arlm.tokenizers.char import CharTokenizer

__all__ = ["EOT", "Tokenizer", "CharTokenizer", "BPETokenizer", "load_tokenizer", "train_tokenizer"]
