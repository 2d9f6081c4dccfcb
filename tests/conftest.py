"""Shared fixtures: a small slice of the bundled corpus, prepared once, and a tiny trained model."""

from __future__ import annotations

from pathlib import Path

import os

import pytest
import torch
from hypothesis import settings

# Local runs explore new random examples (that is how the "<|endoftext|>" round-trip bug was found);
# CI (CI=true) replays a fixed derandomized set so a submission's result does not depend on luck.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "shakespeare"

TINY_MODEL = dict(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_train_config(data: Path, out: Path, **overrides) -> dict:
    """A training config that runs in about a second on one CPU core."""
    cfg = dict(data=str(data), out=str(out), max_steps=20, batch_size=4, eval_interval=10, eval_batches=2,
               log_interval=1, warmup_steps=2, lr=3e-3, min_lr=3e-4, progress=False, device="cpu",
               final_eval=False, model=dict(TINY_MODEL))
    if overrides.get("model", {}).get("type") == "lstm":  # the LSTM takes no attention keys
        cfg["model"] = {k: v for k, v in TINY_MODEL.items() if k != "n_head"}
    for k, v in overrides.items():
        if k == "model":
            cfg["model"] = {**cfg["model"], **v}
        else:
            cfg[k] = v
    return cfg


def hamlet_agreement(ref, other) -> float:
    """Fraction of positions of a Hamlet passage where two loaded models (``arlm.load``; any devices)
    pick the same next token."""
    ids = ref.tokenizer.encode((CORPUS / "hamlet.txt").read_text(encoding="utf-8")[50_000:52_000])
    T = ref.block_size
    same = total = 0
    with torch.no_grad():
        for i in range(0, len(ids) - T, T):
            x = torch.tensor([ids[i:i + T]])
            a = ref.model(x.to(ref.device))[0].argmax(-1).cpu()
            same += int((a == other.model(x.to(other.device))[0].argmax(-1).cpu()).sum())
            total += T
    return same / total


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Two short real texts (the first 40k characters of two plays)."""
    d = tmp_path_factory.mktemp("corpus")
    for name in ("hamlet.txt", "sonnets.txt"):
        (d / name).write_text((CORPUS / name).read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def char_data(corpus_dir, tmp_path_factory) -> Path:
    from arlm.config import PrepareConfig
    from arlm.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "char"
    prepare(PrepareConfig(inputs=[str(corpus_dir)], out=str(out), tokenizer="char"))
    return out


@pytest.fixture(scope="session")
def trained_model(char_data, tmp_path_factory) -> Path:
    """A tiny model trained for 60 steps: enough for text that is not uniform noise."""
    from arlm.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_train_config(char_data, out, max_steps=60, eval_interval=30, final_eval=True))
    return out
