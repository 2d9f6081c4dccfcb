"""Source -> target pairs for encoder-decoders: JSONL ``{"source": ..., "target": ...}`` (or
``{"prompt": ..., "completion": ...}``), one example per line, as translation and summarisation
data come.

The source is encoded as the model reads it at inference (``encode_prompt``: with the end-of-source
token its tokenizer appends); the target is the decoder's labels, its tokens then the end-of-text
token, and the decoder's inputs are the same tokens shifted right behind the decoder's start token
(teacher forcing; transformers' ``shift_tokens_right``). A batch is a :class:`Seq2SeqBatch` the
model takes in place of a GPT's token ids, so the training loop, its evaluation and its objectives
run unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from arlm.data.sft import ExampleData, read_jsonl
from arlm.errors import UserError
from arlm.io.text import check_text
from arlm.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)

ALIASES = (("source", "target"), ("prompt", "completion"))


class Seq2SeqBatch(NamedTuple):
    """Sources (B, S) right-padded, which of their positions are real (B, S), and the decoder's inputs (B, T)."""

    src: torch.Tensor
    src_mask: torch.Tensor
    tgt: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Seq2SeqBatch":
        return Seq2SeqBatch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def numel(self) -> int:
        """Decoder positions (what a step's tokens/s counts)."""
        return self.tgt.numel()


def check_pair(rec: Any, where: str) -> tuple[str, str]:
    """(source, target) of one JSONL record; errors name the line and the expected shape."""
    if isinstance(rec, dict):
        for src_key, tgt_key in ALIASES:
            if src_key in rec or tgt_key in rec:
                src, tgt = rec.get(src_key), rec.get(tgt_key)
                if not isinstance(src, str) or not isinstance(tgt, str):
                    raise UserError(f"{where}: {src_key!r} and {tgt_key!r} must both be text")
                if not src or not tgt:
                    raise UserError(f"{where}: {src_key!r} and {tgt_key!r} must not be empty")
                check_text(src, f"{where} {src_key}")
                check_text(tgt, f"{where} {tgt_key}")
                return src, tgt
    raise UserError(f'{where}: expected {{"source": TEXT, "target": TEXT}} (or "prompt"/"completion"), '
                    f"got {str(rec)[:120]}")


class PairData(ExampleData):
    """Pairs split into train/val (the last ``val_fraction`` of the file is held out), for the training
    loop: :meth:`rows` for the sampler's picks, :meth:`collate` into a batch, :meth:`val_batches`."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, model_config, val_fraction: float):
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.start = model_config.decoder_start_token_id
        S, T = model_config.source_len, model_config.block_size
        eos = tokenizer.eot_id
        if eos is None:
            raise UserError("the model's tokenizer has no end-of-text token to end targets with")
        encode_source = getattr(tokenizer, "encode_prompt", tokenizer.encode)
        examples, cut = [], 0
        for i, rec in enumerate(read_jsonl(path)):
            src, tgt = check_pair(rec, f"{path} example {i + 1}")
            s, t = encode_source(src), tokenizer.encode(tgt) + [eos]
            if len(s) > S or len(t) > T:
                s, t, cut = s[:S], t[:T], cut + 1
            examples.append((np.asarray(s, dtype=np.int64), np.asarray(t, dtype=np.int64)))
        if cut:
            log.warning("%d of %d pairs were longer than the model reads (source %d, target %d tokens) and were cut",
                        cut, len(examples), S, T)
        n_val = max(1, int(round(len(examples) * val_fraction)))
        if len(examples) - n_val < 1:
            raise UserError(f"{path}: {len(examples)} pair(s) cannot be split into training and validation; add pairs")
        self.train, self.val = examples[:-n_val], examples[-n_val:]
        self.meta = {"format": "pairs", "source": str(self.path), "examples": len(examples),
                     "train_examples": len(self.train), "val_examples": len(self.val),
                     "vocab_size": tokenizer.vocab_size,
                     "train_tokens": int(sum(len(s) + len(t) for s, t in self.train))}

    def collate(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Seq2SeqBatch, torch.Tensor]:
        """Right-padded sources with their mask, decoder inputs ([start] + target[:-1]) and labels
        (the target; -1 on padding, which the loss ignores)."""
        S, T = max(len(s) for s, _ in rows), max(len(t) for _, t in rows)
        src = np.zeros((len(rows), S), dtype=np.int64)
        mask = np.zeros((len(rows), S), dtype=bool)
        tgt = np.full((len(rows), T), self.start, dtype=np.int64)
        y = np.full((len(rows), T), -1, dtype=np.int64)
        for r, (s, t) in enumerate(rows):
            src[r, :len(s)], mask[r, :len(s)] = s, True
            tgt[r, 1:len(t)] = t[:-1]
            y[r, :len(t)] = t
        return Seq2SeqBatch(torch.from_numpy(src), torch.from_numpy(mask), torch.from_numpy(tgt)), torch.from_numpy(y)
