"""Reading prepared token shards and drawing training batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from arlm.data.prepare import META_FILE
from arlm.errors import UserError
from arlm.fsutil import read_json


@dataclass
class TokenData:
    """A prepared data folder: memory-mapped train/val token arrays plus its metadata."""

    path: Path
    meta: dict
    train: np.ndarray
    val: np.ndarray

    @classmethod
    def open(cls, directory: str | Path) -> "TokenData":
        d = Path(directory)
        if not d.is_dir():
            raise UserError(f"data folder not found: {d}; create it with `arlm prepare INPUT --out {d}`")
        meta = read_json(d / META_FILE, f"{d} is not a folder made by `arlm prepare` (or preparation did not "
                                         f"finish); run `arlm prepare` again")
        arrays = {}
        for split in ("train", "val"):
            f = d / f"{split}.bin"
            expected = meta[f"{split}_tokens"]
            dtype = np.dtype(meta["dtype"])
            if not f.is_file() or f.stat().st_size != expected * dtype.itemsize:
                raise UserError(f"{f} is missing or truncated (expected {expected} tokens); run `arlm prepare` again")
            arrays[split] = np.memmap(f, dtype=dtype, mode="r") if expected else np.zeros(0, dtype)
        return cls(d, meta, arrays["train"], arrays["val"])

    def check_block_size(self, block_size: int) -> None:
        """Both splits must hold at least one full window of ``block_size + 1`` tokens."""
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < block_size + 1:
                raise UserError(
                    f"the {split} split has {n} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    f"use more text, a larger --val-fraction when preparing, or a smaller --block-size"
                )


def random_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator):
    """``batch_size`` random windows: inputs x and next-token targets y, each (B, T) int64 (as nanoGPT)."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = np.stack([data[i:i + block_size] for i in ix]).astype(np.int64)
    y = np.stack([data[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def sequential_batches(ids: np.ndarray, block_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering every token after the first exactly once, for exact evaluation.

    The last window may be shorter; targets beyond the data are -1 (ignored by the loss).
    """
    n_targets = len(ids) - 1
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
