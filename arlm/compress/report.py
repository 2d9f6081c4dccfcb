"""The table every ``arlm compress`` command ends with: the original model against the result (and
baselines), one row each: size of the weights file, parameters, decoding speed at batch 1 and 8, and
validation perplexity on the same tokens.

Speeds come from the decoding engine (greedy, the length forced, the same prompts for every model)
after a warm-up, the fastest of three runs; rows still differ by a few percent run to run on a busy
machine. bench/ alternates repeated runs for figures to quote.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arlm.config import CompressReportConfig, GenerateConfig
from arlm.errors import UserError
from arlm.eval.perplexity import loss_over_batches
from arlm.data.loader import TokenData, sequential_batches
from arlm.generate.engine import generate_ids
from arlm.io.files import read_text_file

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")
PROMPT_TOKENS = 16
REPEATS = 3  # decoding measurements per model and batch size


@dataclass
class Row:
    """One model's line of the table (None: not measured)."""

    name: str
    file_bytes: int | None
    params: int
    tokens_per_s_1: float | None = None
    tokens_per_s_8: float | None = None
    loss: float | None = None
    nonzero: int | None = None  # weights that are not zero (pruning)

    @property
    def perplexity(self) -> float | None:
        return None if self.loss is None else math.exp(self.loss)

    def to_json(self) -> dict:
        return {**asdict(self), "perplexity": self.perplexity}


def folder_bytes(path: str | Path) -> int:
    """Bytes of the weight files of a model folder (safetensors, or PyTorch .bin/.pt; trainer state not counted)."""
    files = {f for pattern in WEIGHT_FILES for f in Path(path).glob(pattern) if f.name != "trainer_state.pt"}
    return sum(f.stat().st_size for f in files)


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the size of a model that arlm cannot write as safetensors
    (PyTorch's dynamic int8 keeps packed weights in opaque objects)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def logical_params(model: nn.Module) -> int:
    """Weights a model represents, whatever their storage: float parameters, plus in x out (+ bias) of
    each quantized linear layer (tied matrices once)."""
    seen, total = set(), 0  # ids of tensors counted (a tied matrix belongs to two modules)
    for module in model.modules():
        if hasattr(module, "dequantized") and hasattr(module, "in_features"):
            total += module.in_features * module.out_features + (module.bias.numel() if module.bias is not None else 0)
        elif type(module).__module__.startswith("torch.ao.nn.quantized") and hasattr(module, "in_features"):
            bias = module.bias()  # torch.ao's dynamic int8 Linear: weight and bias packed, read by methods
            total += module.in_features * module.out_features + (0 if bias is None else bias.numel())
        else:
            fresh = [p for p in module.parameters(recurse=False) if id(p) not in seen]
            seen.update(id(p) for p in fresh)
            total += sum(p.numel() for p in fresh)
    return total


def validation_ids(data: str, tokenizer, limit: int) -> np.ndarray:
    """Token ids to score: a prepared folder's validation split (refused unless prepared with the model's
    tokenizer) or a text file, tokenized; at most ``limit`` (0: all)."""
    path = Path(data)
    if path.is_dir():
        ids = np.asarray(TokenData.open_matching(path, tokenizer, "give the folder the model was trained on, or a "
                                                 "text file").val, dtype=np.int64)
    elif path.is_file():
        ids = np.asarray(tokenizer.encode(read_text_file(path)), dtype=np.int64)
    else:
        raise UserError(f"--data {data} not found: give a prepared data folder or a UTF-8 text file")
    ids = ids[:limit] if limit else ids
    if len(ids) < 2:
        raise UserError(f"--data {data} holds fewer than 2 tokens; there is nothing to score")
    return ids


def validation_loss(model: nn.Module, ids: np.ndarray, batch_size: int = 8) -> float:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return loss_over_batches(model, sequential_batches(ids, model.config.block_size, batch_size), device)


def decode_rate(model: nn.Module, rows: int, new_tokens: int, vocab: int, seed: int = 0) -> float:
    """New tokens per second of greedy decoding of ``rows`` sequences at once (``new_tokens`` each, the
    length forced), after a short warm-up, the fastest of REPEATS runs; prompts of PROMPT_TOKENS random
    ids, the same for every model."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, vocab, (rows, PROMPT_TOKENS), generator=g).tolist()
    new_tokens = min(new_tokens, model.config.block_size - PROMPT_TOKENS)
    if new_tokens < 1:
        return float("nan")
    cfg = GenerateConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0)
    generate_ids(model, prompts, GenerateConfig(max_new_tokens=2, min_new_tokens=2, temperature=0))  # warm-up
    times = []
    for _ in range(REPEATS):  # the fastest of a few: other work on the machine only ever slows a run down
        t = time.perf_counter()
        generate_ids(model, prompts, cfg)
        times.append(time.perf_counter() - t)
    return rows * new_tokens / min(times)


def nonzero_params(model: nn.Module) -> int:
    """Float parameters that are not exactly zero (tied ones once)."""
    return sum(int((p != 0).sum()) for p in {id(p): p for p in model.parameters()}.values())


def measure(name: str, model: nn.Module, file_bytes: int | None, cfg: CompressReportConfig,
            ids: np.ndarray | None, sparse: bool = False) -> Row:
    """A row of the table for ``model`` (in eval mode); ``sparse``: also count its nonzero weights."""
    row = Row(name, file_bytes, logical_params(model), nonzero=nonzero_params(model) if sparse else None)
    model.eval()
    if cfg.decode_tokens:
        vocab = model.config.vocab_size
        row.tokens_per_s_1 = decode_rate(model, 1, cfg.decode_tokens, vocab)
        row.tokens_per_s_8 = decode_rate(model, 8, cfg.decode_tokens, vocab)
    if ids is not None:
        row.loss = validation_loss(model, ids)
    return row


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def format_table(rows: list[Row]) -> str:
    """The rows as a Markdown table, sizes and speeds also relative to the first row (the original)."""
    base = rows[0]
    sparse = any(r.nonzero is not None for r in rows)
    lines = ["| model | weights file | parameters |" + (" nonzero |" if sparse else "") +
             " decode tok/s, batch 1 | batch 8 | val loss | perplexity |",
             "|---|---|---|---|---|---|---|" + ("---|" if sparse else "")]
    for r in rows:
        rel = "" if r is base or not (r.file_bytes and base.file_bytes) else f" ({r.file_bytes / base.file_bytes:.0%})"
        speed = ""
        if r is not base and r.tokens_per_s_1 and base.tokens_per_s_1:
            speed = f" ({r.tokens_per_s_1 / base.tokens_per_s_1:.2f}x)"
        ppl = _num(r.perplexity, 3)
        if r is not base and r.perplexity and base.perplexity:
            ppl += f" ({r.perplexity / base.perplexity - 1:+.1%})"
        nonzero = (f" {r.nonzero / 1e6:.2f}M ({r.nonzero / r.params:.0%}) |" if r.nonzero is not None else " - |") if sparse else ""
        lines.append(f"| {r.name} | {_size(r.file_bytes)}{rel} | {r.params / 1e6:.2f}M |{nonzero} "
                     f"{_num(r.tokens_per_s_1, 1)}{speed} | {_num(r.tokens_per_s_8, 1)} | {_num(r.loss, 4)} | {ppl} |")
    return "\n".join(lines)
