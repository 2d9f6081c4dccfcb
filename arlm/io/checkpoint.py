"""Checkpoint folders: safetensors weights + typed config.json + tokenizer (+ trainer state), written
atomically, read back as a typed :class:`Checkpoint`.

A training output folder looks like::

    OUT/
      latest/   model.safetensors  config.json  tokenizer.json  trainer_state.pt
      best/     model.safetensors  config.json  tokenizer.json
      metrics.jsonl  loss.png  .lock (while a run writes it)

Each checkpoint folder is built under a temporary name and swapped in whole (:func:`arlm.io.atomic.atomic_dir`),
so a crash mid-save leaves the previous checkpoint intact, never a half-written one. Nothing read
here runs code: weights are safetensors, and pickles (trainer state, Hugging Face ``.bin`` weights)
are read with ``weights_only=True``, which allows tensors and plain containers only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from arlm.errors import UserError
from arlm.io.atomic import atomic_dir, recover_dir
from arlm.io.files import read_json
from arlm.io.schema import CheckpointInfo, checkpoint_info
from arlm.version import __version__

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.pt"
LATEST, BEST = "latest", "best"


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (its header is checked against the file's length before
    anything is allocated); a damaged file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is damaged or truncated ({str(e).splitlines()[0][:200]}); use another copy") from None


def read_pickle(path: str | Path, what: str) -> Any:
    """A file written by ``torch.save``, loaded with ``weights_only=True`` (no code in it runs). A file
    that needs code, or a damaged one, is a UserError that says which and names it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except Exception as e:  # torch raises several types for damaged zips and refused pickles
        text = str(e)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused or "Weights only load failed" in text:
            name = f" ({refused.group(1)})" if refused else ""
            raise UserError(f"{path} holds Python objects that need code to load{name}; arlm loads only tensors "
                            f"and plain data from {what}, so it will not run it") from None
        raise UserError(f"{path} is damaged or truncated ({type(e).__name__}); {what} cannot be read") from None


@dataclass
class Checkpoint:
    """One checkpoint folder: its path and typed config.json; weights and trainer state read on demand."""

    path: Path
    info: CheckpointInfo

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    def weights(self) -> dict[str, torch.Tensor]:
        return checkpoint_weights(self.path)

    def trainer_state(self) -> Any:
        return trainer_state(self.path)


def checkpoint_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder's model.safetensors (checked against a model by the caller)."""
    f = Path(folder) / WEIGHTS
    if not f.is_file():
        raise UserError(f"checkpoint {folder} is incomplete: {WEIGHTS} is missing")
    return read_safetensors(f)


def trainer_state(folder: str | Path) -> Any:
    """The saved trainer state of a latest/ checkpoint, loaded safely (checked by arlm.train.state)."""
    f = Path(folder) / STATE
    if not f.is_file():
        raise UserError(f"cannot resume from {folder}: {STATE} is missing (only latest/ checkpoints can be resumed)")
    return read_pickle(f, "a trainer state")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a training output folder (then prefer best/, else latest/)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"model folder not found: {p}")
    if not p.is_dir():
        raise UserError(f"{p} is a file; point at a model folder (a checkpoint, training output or Hugging Face folder)")
    for candidate in (p, p / BEST, p / LATEST):
        recover_dir(candidate)
        if (candidate / CONFIG).exists() or (candidate / WEIGHTS).exists():
            return candidate
    raise UserError(f"{p} holds no checkpoint (no {CONFIG} / {WEIGHTS}); point --model at a folder written by `arlm train`")


def open_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint in ``path`` (a checkpoint or training output folder), its config.json validated."""
    ckpt = resolve_checkpoint(path)
    data = read_json(ckpt / CONFIG, "this checkpoint is incomplete; use another (best/ or latest/) or train again")
    return Checkpoint(ckpt, checkpoint_info(data, str(ckpt / CONFIG)))


def save_checkpoint(path: str | Path, weights: dict[str, torch.Tensor], info: CheckpointInfo, tokenizer,
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Write one checkpoint folder atomically: ``weights`` (contiguous CPU tensors, tied ones once),
    ``info`` as config.json, the tokenizer's own files (``tokenizer.save(folder)``), and the trainer state."""
    with atomic_dir(path) as tmp:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        config = {"arlm_version": __version__, "model_type": info.model.type}
        config.update((k, v) for k, v in info.to_json().items() if k not in config and v is not None)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE)
    return Path(path)
