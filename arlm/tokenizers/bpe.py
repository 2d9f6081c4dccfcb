"""Byte-level BPE (Sennrich et al. 2016; byte-level variant of GPT-2) on Hugging Face ``tokenizers``.

Every string round-trips exactly, Chinese and emoji included, because the base alphabet is the
256 bytes: no input is ever out of vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from arlm.errors import UserError
from arlm.tokenizers.base import EOT, TOKENIZER_FILE, library_failure


class BPETokenizer:
    kind = "bpe"
    modality = "text"

    def __init__(self, tok: HFTokenizer):
        self.tok = tok
        # Text that merely contains "<|endoftext|>" is text: only prepare's document joins insert the
        # end-of-text id. (HF matches special tokens in raw text by default; the flag is not saved in
        # tokenizer.json, so it is set here for trained and loaded tokenizers alike.)
        self.tok.encode_special_tokens = True
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eot_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        try:
            tok = HFTokenizer.from_file(str(path))
        except BaseException as e:
            if not library_failure(e):
                raise
            raise UserError(f"{path} is not a tokenizer file the tokenizers library can read "
                            f"({str(e).splitlines()[0][:160]}); prepare the data again") from None
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        self.tok.save(str(Path(directory) / TOKENIZER_FILE))
