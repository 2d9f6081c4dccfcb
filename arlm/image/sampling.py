"""Drawing images from a trained pixel model through the decoding engine, one request per image.

Every image is one request with its own seed (``seed + i``), so a grid is the same whatever the batch
(the engine's batch invariance). A constraint keeps each step to what a record allows there: a class
label first when the model draws the class itself, then colours only, never end-of-text.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from arlm.config import EngineConfig, SamplingParams
from arlm.errors import UserError
from arlm.generate.engine import Engine
from arlm.tokenizers.base import expect_tokenizer
from arlm.tokenizers.image import PixelTokenizer

MAX_BATCH = 64  # images decoded at once


class RecordConstraint:
    """What may come next in an image record: a label while ``label_steps`` remain, then colours."""

    def __init__(self, tok: PixelTokenizer, label_steps: int, device: torch.device):
        V = tok.vocab_size
        self.colours = torch.zeros(V, dtype=torch.bool, device=device)
        self.colours[:tok.n_colors] = True
        self.labels = torch.zeros(V, dtype=torch.bool, device=device)
        self.labels[tok.n_colors:tok.eot_id] = True
        self.label_steps = label_steps

    def allowed(self, generated: list[int], vocab_size: int) -> torch.Tensor:
        return self.labels if len(generated) < self.label_steps else self.colours

    def fresh(self) -> "RecordConstraint":
        return self


def pixel_tokenizer(tok) -> PixelTokenizer:
    return expect_tokenizer(tok, PixelTokenizer, "images", "image")


def generate_records(model: torch.nn.Module, tok: PixelTokenizer, prompts: Sequence[list[int]], label_steps: Sequence[int],
                     temperature: float, top_k: int, seed: int) -> list[list[int]]:
    """Each prompt continued to a whole record (the rest of its label and pixels): the generated ids."""
    device = next(model.parameters()).device
    rows: list[list[int]] = [[] for _ in prompts]
    engine = Engine(model, None, (), EngineConfig(max_batch=min(MAX_BATCH, max(1, len(prompts))),
                                                   max_len=tok.record_tokens + 1, prefix_cache_mb=0))
    order = {}
    for i, (prompt, steps) in enumerate(zip(prompts, label_steps)):
        new = tok.record_tokens - len(prompt)
        params = SamplingParams(max_new_tokens=new, temperature=temperature, top_k=top_k, seed=seed + i)
        order[engine.add(prompt, params, constraint=RecordConstraint(tok, steps, device))] = i
    while engine.has_unfinished():
        for out in engine.step():
            if out.token is not None and not out.eos:
                rows[order[out.request_id]].append(out.token)
    return rows


def sample_images(model: torch.nn.Module, tok: PixelTokenizer, labels: Sequence[str | None], temperature: float = 1.0,
                  top_k: int = 0, seed: int = 0) -> list[tuple[str | None, np.ndarray]]:
    """One image per entry of ``labels``: of that class, or (None) of a class the model draws itself
    (for a model without classes: unconditional). Returns (class, image) pairs."""
    prompts = [tok.prefix(label) for label in labels]
    steps = [1 if label is None and tok.classes else 0 for label in labels]
    out = []
    for label, prompt, ids in zip(labels, prompts, generate_records(model, tok, prompts, steps, temperature, top_k, seed)):
        drawn = tok.label_of(ids[0]) if label is None and tok.classes else label
        out.append((drawn, tok.decode(ids)))
    return out


def complete_images(model: torch.nn.Module, tok: PixelTokenizer, pixels: np.ndarray, labels: Sequence[str | None],
                    rows_given: int, temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> list[np.ndarray]:
    """Images (N, H*W colour ids) completed below their first ``rows_given`` rows."""
    if not 0 < rows_given < tok.height:
        raise UserError(f"--rows-given must be between 1 and {tok.height - 1} for {tok.height}-row images, got {rows_given}")
    given = rows_given * tok.width
    prompts = [tok.prefix(label) + row[:given].tolist() for label, row in zip(labels, pixels)]
    done = generate_records(model, tok, prompts, [0] * len(prompts), temperature, top_k, seed)
    return [tok.decode(p[len(tok.prefix(label)):] + ids) for p, label, ids in zip(prompts, labels, done)]
