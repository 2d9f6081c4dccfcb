"""Masked-language-model training data for the encoder (arlm/model/encoder.py), as BERT was trained
(Devlin et al. 2019, section 3.1): a text corpus cut into windows of ``[CLS] tokens [SEP]`` that fill
the model's positions, and in each batch 15% of the tokens chosen to predict; of those, 80% become
``[MASK]``, 10% a random token and 10% stay, and the loss is taken on the chosen ones only.

The choice is a function of the batch's tokens and a seed (a generator seeded with both), so a
resumed run masks exactly as an uninterrupted one, and the validation batches are masked the same way
at every evaluation. The corpus is a UTF-8 text file, or JSONL with the text under ``"text"``; the last
``val_fraction`` of the windows is held out; the remainder shorter than a window is left out.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from arlm.data.sft import ExampleData
from arlm.errors import UserError
from arlm.io.files import read_jsonl, read_text_file
from arlm.tokenizers.base import Tokenizer

MASK_RATE, TO_MASK, TO_RANDOM = 0.15, 0.8, 0.1


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The ids of [CLS], [SEP] and [MASK] (or RoBERTa's <s>, </s>, <mask>) in the tokenizer."""
    inner = getattr(tokenizer, "tok", None)
    found = {}
    for role, names in (("cls", ("[CLS]", "<s>")), ("sep", ("[SEP]", "</s>")), ("mask", ("[MASK]", "<mask>"))):
        ids = [inner.token_to_id(n) for n in names] if inner is not None else []
        ids = [i for i in ids if i is not None]
        if not ids:
            raise UserError(f"masked-language-model training needs the tokenizer's {names[0]} token, which this one lacks; "
                            f"fine-tune a BERT folder, whose tokenizer has [CLS], [SEP] and [MASK]")
        found[role] = ids[0]
    return found


def mask_tokens(x: torch.Tensor, specials: set[int], mask_id: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of token windows ``x`` (B, T): targets -1 except at the chosen positions."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(x.numpy().tobytes())) % (2 ** 63))
    can = ~torch.isin(x, torch.tensor(sorted(specials), dtype=x.dtype))
    chosen = (torch.rand(x.shape, generator=g) < MASK_RATE) & can
    targets = torch.where(chosen, x, torch.full_like(x, -1))
    roll = torch.rand(x.shape, generator=g)
    inputs = x.clone()
    inputs[chosen & (roll < TO_MASK)] = mask_id
    swap = chosen & (roll >= TO_MASK) & (roll < TO_MASK + TO_RANDOM)
    inputs[swap] = torch.randint(vocab_size, x.shape, generator=g)[swap]
    return inputs, targets


class MLMData(ExampleData):
    """Windows of a corpus for the training loop (``rows``, ``collate`` into masked (x, y), ``val_batches``)."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, block_size: int, val_fraction: float, seed: int = 0):
        self.path, self.tokenizer, self.seed = Path(path), tokenizer, seed
        ids = special_ids(tokenizer)
        pad = getattr(tokenizer, "tok", None).token_to_id("[PAD]") if hasattr(tokenizer, "tok") else None
        self.mask_id, self.specials = ids["mask"], set(ids.values()) | ({pad} if pad is not None else set())
        if self.path.suffix.lower() == ".jsonl":
            texts = []
            for n, rec in read_jsonl(self.path):
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise UserError(f"{self.path} line {n}: expected {{\"text\": ...}} for masked-language-model training")
                texts.append(rec["text"])
        else:
            texts = [read_text_file(self.path)]
        tokens: list[int] = []
        for t in texts:
            tokens += tokenizer.encode(t)
        n = block_size - 2
        windows = [np.asarray([ids["cls"], *tokens[i:i + n], ids["sep"]], dtype=np.int64)
                   for i in range(0, len(tokens) - n + 1, n)]
        n_val = max(1, int(round(len(windows) * val_fraction)))
        if len(windows) - n_val < 1:
            raise UserError(f"{self.path}: {len(tokens):,} tokens make {len(windows)} window(s) of {block_size}; "
                            f"masked-language-model training needs at least two (one held out): give more text")
        self.train, self.val = windows[:-n_val], windows[-n_val:]
        self.meta = {"format": "mlm", "source": str(self.path), "tokens": len(tokens), "train_windows": len(self.train),
                     "val_windows": len(self.val), "vocab_size": tokenizer.vocab_size, "mask_rate": MASK_RATE,
                     "train_tokens": len(self.train) * block_size}

    def rows(self, picks: list[int], block_size: int) -> list:
        return [self.train[i % len(self.train)] for i in picks]

    def collate(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.stack(rows))
        return mask_tokens(x, self.specials, self.mask_id, self.tokenizer.vocab_size, self.seed)
