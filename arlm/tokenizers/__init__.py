"""Tokenizers behind one small protocol: ``encode``, ``decode``, ``vocab_size``, ``eot_id``, ``save``.

Implementations: :class:`CharTokenizer` (one id per Unicode character), :class:`BPETokenizer`
(byte-level BPE trained by ``arlm prepare`` with Hugging Face ``tokenizers``), and
:class:`PretrainedTokenizer` (a Hugging Face checkpoint's own tokenizer files).
"""

from arlm.tokenizers.base import EOT, Tokenizer, load_tokenizer, train_tokenizer
from arlm.tokenizers.bpe import BPETokenizer
from arlm.tokenizers.char import CharTokenizer
from arlm.tokenizers.pretrained import PretrainedTokenizer

__all__ = ["EOT", "Tokenizer", "CharTokenizer", "BPETokenizer", "PretrainedTokenizer", "load_tokenizer", "train_tokenizer"]
