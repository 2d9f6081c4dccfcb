"""The LSTM baseline against the GPT on the Shakespeare corpus at equal training time.

    python bench/lstm_vs_gpt.py [--minutes 3] [--data runs/data/shakespeare-char]

Both train from scratch with `arlm.train` on the prepared character-level corpus (`make demo` prepares
it: the 39 plays and poems of data/shakespeare, last 10% held out), for the same wall-clock budget, with
the same batch (16 x 128 characters), AdamW, warmup then a constant learning rate (each at a rate that
suits it), no dropout; each model is then scored on the whole validation split. Prints a Markdown table
(docs/lstm.md shows one run's output).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import arlm

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "GPT, 4 layers x 192 (char-small)": dict(model=dict(type="gpt", n_layer=4, n_head=4, n_embd=192), lr=2e-3),
    "LSTM, 2 layers x 512": dict(model=dict(type="lstm", n_layer=2, n_embd=512), lr=2e-3),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--data", default=str(ROOT / "runs" / "data" / "shakespeare-char"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            model = dict(block_size=128, dropout=0.0, **spec["model"])
            s = arlm.train(dict(data=args.data, out=str(Path(tmp) / name.split(",")[0]), max_steps=1_000_000,
                                max_minutes=args.minutes, batch_size=16, lr=spec["lr"], lr_schedule="constant",
                                warmup_steps=100, eval_interval=200, eval_batches=10, progress=False, model=model))
            rows.append((name, s["params"], s["step"], s["tokens_per_s"], s["val_loss"]))
            print(f"{name}: {s['step']} steps, {s['tokens_per_s']:,.0f} tokens/s, validation loss {s['val_loss']:.4f}", flush=True)
    print(f"\n| model | parameters | steps in {args.minutes:g} min | tokens/s | validation loss (nats/char) |")
    print("|---|---|---|---|---|")
    for name, params, steps, tps, val in rows:
        print(f"| {name} | {params / 1e6:.2f}M | {steps:,} | {tps:,.0f} | {val:.4f} |")


if __name__ == "__main__":
    main()
