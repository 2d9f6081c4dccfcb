"""Reading prepared token shards and drawing training batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from arlm.config import to_dict
from arlm.data.prepare import META_FILE
from arlm.errors import UserError
from arlm.io.atomic import recover_dir
from arlm.io.schema import DataMeta, read_data_meta
from arlm.runtime import generator
from arlm.tokenizers import Tokenizer, load_tokenizer
from arlm.tokenizers.base import same_vocabulary


@dataclass
class TokenData:
    """A prepared data folder: memory-mapped train/val token arrays, its typed meta.json and its tokenizer."""

    path: Path
    meta: DataMeta
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer

    @classmethod
    def open(cls, directory: str | Path) -> "TokenData":
        d = Path(directory)
        recover_dir(d)  # a prepare that was killed between its two renames
        if not d.is_dir():
            raise UserError(f"data folder not found: {d}; create it with `arlm prepare INPUT --out {d}`"
                            if not d.exists() else f"--data {d} is a file; give a folder made by `arlm prepare`")
        meta = read_data_meta(d / META_FILE, f"{d} is not a folder made by `arlm prepare` (or preparation did not "
                                             f"finish); run `arlm prepare` again")
        arrays = {}
        for split in ("train", "val"):
            f = d / f"{split}.bin"
            expected = getattr(meta, f"{split}_tokens")
            dtype = np.dtype(meta.dtype).newbyteorder("<")
            if not f.is_file() or f.stat().st_size != expected * dtype.itemsize:
                raise UserError(f"{f} is missing or truncated (expected {expected} tokens); run `arlm prepare` again")
            arrays[split] = np.memmap(f, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        tokenizer = load_tokenizer(d)
        if tokenizer.vocab_size != meta.vocab_size:
            raise UserError(f"{d}: the tokenizer ({tokenizer.vocab_size} tokens) and {META_FILE} (vocab_size "
                            f"{meta.vocab_size}) disagree; run `arlm prepare` again")
        return cls(d, meta, arrays["train"], arrays["val"], tokenizer)

    @classmethod
    def open_matching(cls, directory: str | Path, tokenizer: Tokenizer, fix: str = "") -> "TokenData":
        """A prepared folder whose tokenizer is ``tokenizer`` (a model's): anything else is refused, with
        ``fix`` (default: use the folder the model was trained on)."""
        data = cls.open(directory)
        if not same_vocabulary(data.tokenizer, tokenizer):
            raise UserError(f"{directory} was not prepared with this model's tokenizer; "
                            f"{fix or 'use the folder the model was trained on'}")
        return data

    @property
    def vocab_size(self) -> int:
        return self.meta.vocab_size

    @property
    def record(self) -> dict:
        """What a checkpoint records about its training data."""
        return to_dict(self.meta)

    def check_ids(self, vocab_size: int) -> None:
        """Every token id of both shards lies in the vocabulary (a damaged or foreign shard fails here,
        not as an IndexError in the middle of training)."""
        for split in ("train", "val"):
            ids = getattr(self, split)
            if len(ids) and int(ids.max()) >= min(vocab_size, self.meta.vocab_size):
                at = int(np.argmax(ids >= min(vocab_size, self.meta.vocab_size)))
                raise UserError(f"{self.path / f'{split}.bin'}: token id {int(ids[at])} at position {at} is outside the "
                                f"vocabulary (0..{self.meta.vocab_size - 1}); the file is damaged: run `arlm prepare` again")

    def sampling(self, block_size: int) -> tuple[int, int, int]:
        """(tokens to draw from, window, stride) for the training sampler: windows of the train split,
        starting anywhere (stride 1) or, for fixed-length records (images), at record boundaries."""
        return len(self.train), block_size, self.stride

    @property
    def stride(self) -> int:
        """Where windows may start: every token (1), or every record's first token."""
        return self.meta.record_tokens or 1

    def rows(self, starts: list[int], block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training rows (inputs, next-token targets) of the windows starting at ``starts``."""
        return [(self.train[s:s + block_size], self.train[s + 1:s + 1 + block_size]) for s in starts]

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one full window of ``block_size + 1`` tokens; windows of records
        (images) hold whole records."""
        R = self.meta.record_tokens
        if R and block_size % R:
            what = {"series": "series records", "image": "images"}.get(self.meta.modality, "records")
            parts = {"series": "end-of-text padding, context, target",
                     "image": "end-of-text, label, pixels"}.get(self.meta.modality, "fixed length")
            raise UserError(f"--block-size {block_size} does not hold whole {what}: each is a record of {R} tokens "
                            f"({parts}); use --block-size {R} (or a multiple)")
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < block_size + 1:
                raise UserError(
                    f"the {split} split has {n} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    f"use more text, a larger --val-fraction when preparing, or a smaller --block-size"
                )


def random_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator, stride: int = 1):
    """``batch_size`` random windows: inputs x and next-token targets y, each (B, T) int64 (as nanoGPT),
    starting at multiples of ``stride``."""
    return windows(data, random_starts(len(data), block_size, stride, batch_size, generator), block_size)


def random_starts(n_tokens: int, block_size: int, stride: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` window starts, uniformly at random among the multiples of ``stride`` that leave room for a
    window and its targets (stride 1: any of the ``n_tokens - block_size`` positions, as nanoGPT)."""
    if stride == 1:
        return torch.randint(n_tokens - block_size, (count,), generator=generator).tolist()
    return [stride * i for i in torch.randint((n_tokens - block_size - 1) // stride + 1, (count,), generator=generator).tolist()]


def windows(data: np.ndarray, starts: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and next-token targets y (B, T) int64 for the windows starting at ``starts``."""
    x = np.stack([data[i:i + block_size] for i in starts]).astype(np.int64)
    y = np.stack([data[i + 1:i + 1 + block_size] for i in starts]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


class WindowSampler:
    """Start positions of training windows (``block_size`` inputs + 1 target each) in a split of
    ``n_tokens`` tokens, at multiples of ``stride`` (1: anywhere), in one of two orders:

    * ``random``: uniformly at random with replacement, from ``generator`` (nanoGPT's ``get_batch``);
    * ``epoch``: without replacement. Each epoch cuts the split into non-overlapping windows from a
      random offset in [0, block_size) (so window boundaries move between epochs) and visits them in a
      shuffled order; every target token is seen at most once per epoch. With a ``stride`` (fixed-length
      records, e.g. images), each epoch visits the window at every record boundary once, shuffled. The offset and order of epoch
      e come from ``seed`` and e alone, so the position (epoch, index) is all a checkpoint needs.
    """

    def __init__(self, n_tokens: int, block_size: int, stride: int, order: str, seed: int, generator: torch.Generator):
        assert order in ("random", "epoch") and n_tokens > block_size
        self.n_tokens, self.block_size, self.order, self.seed, self.generator = n_tokens, block_size, order, seed, generator
        self.stride = stride
        self.epoch, self.index = 0, 0
        self._perm: list[int] | None = None

    def _epoch_starts(self) -> list[int]:
        if self._perm is None and self.stride > 1:  # records: each record's window once, shuffled
            g = generator(self.seed * 1_000_003 + self.epoch)
            count = (self.n_tokens - self.block_size - 1) // self.stride + 1
            self._perm = [self.stride * int(i) for i in torch.randperm(count, generator=g)]
        if self._perm is None:
            g = generator(self.seed * 1_000_003 + self.epoch)
            offset = int(torch.randint(self.block_size, (1,), generator=g))
            count = (self.n_tokens - 1 - offset) // self.block_size
            if count == 0:  # a split shorter than two windows: start at 0
                offset, count = 0, 1
            self._perm = [offset + self.block_size * int(i) for i in torch.randperm(count, generator=g)]
        return self._perm

    def next(self, count: int) -> list[int]:
        """The next ``count`` start positions (an epoch boundary may fall inside them)."""
        if self.order == "random":
            return random_starts(self.n_tokens, self.block_size, self.stride, count, self.generator)
        out: list[int] = []
        while len(out) < count:
            starts = self._epoch_starts()
            take = starts[self.index:self.index + count - len(out)]
            out += take
            self.index += len(take)
            if self.index == len(starts):
                self.epoch, self.index, self._perm = self.epoch + 1, 0, None
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index, self._perm = int(state["epoch"]), int(state["index"]), None


def sequential_batches(ids: np.ndarray, block_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering every token after the first exactly once, for exact evaluation.

    The last window may be shorter; targets beyond the data are -1 (ignored by the loss).
    """
    n_targets = len(ids) - 1
    block_size = max(1, min(block_size, n_targets))  # a window never longer than the text (a huge context allocates nothing)
    starts = list(range(0, n_targets, block_size))
    for b in range(0, len(starts), batch_size):
        xs, ys = [], []
        for s in starts[b:b + batch_size]:
            x = np.zeros(block_size, dtype=np.int64)
            y = np.full(block_size, -1, dtype=np.int64)
            n = min(block_size, n_targets - s)
            x[:n] = ids[s:s + n]
            y[:n] = ids[s + 1:s + 1 + n]
            xs.append(x)
            ys.append(y)
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def collate(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows to the longest: inputs with ``pad_id`` (never attended to by real positions,
    which only look left), targets with -1 (ignored by the loss). (B, T) int64 each."""
    T = max(len(x) for x, _ in rows)
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), -1, dtype=np.int64)
    for r, (xi, yi) in enumerate(rows):
        x[r, :len(xi)] = xi
        y[r, :len(yi)] = yi
    return torch.from_numpy(x), torch.from_numpy(y)
