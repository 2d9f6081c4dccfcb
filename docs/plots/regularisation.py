"""Draw docs/img/regularisation.png: a model that overfits a small corpus, trained four ways.

    python docs/plots/regularisation.py     # about 5 minutes on 2 CPU cores

A 1.8M-parameter character model on the first 10,000 characters of Hamlet (the first half for
training, so each character is seen ~120 times in 600 steps of 16 x 64; the second half for validation) with no regularisation, with dropout 0.2, with
weight decay 0.5 (AdamW, decoupled), and with early stopping (patience 3): training and validation loss
of real `arlm.train` runs. Gradient clipping (grad_clip=1.0) is on in all four, as by default.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import arlm  # noqa: E402
from arlm.config import PrepareConfig  # noqa: E402
from arlm.data.prepare import prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "regularisation.png"
RUNS = {
    "none (dropout 0, weight decay 0)": dict(model=dict(dropout=0.0), weight_decay=0.0),
    "dropout 0.2": dict(model=dict(dropout=0.2), weight_decay=0.0),
    "weight decay 0.5": dict(model=dict(dropout=0.0), weight_decay=0.5),
    "early stopping (patience 3)": dict(model=dict(dropout=0.0), weight_decay=0.0, patience=3),
}


def records(out: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "hamlet.txt").write_text((ROOT / "data" / "shakespeare" / "hamlet.txt").read_text(encoding="utf-8")[:10_000],
                                        encoding="utf-8")
        prepare(PrepareConfig(inputs=[str(tmp / "hamlet.txt")], out=str(tmp / "data"), val_fraction=0.5))
        fig, axes = plt.subplots(1, len(RUNS), figsize=(15, 3.8), sharey=True)
        for ax, (name, extra) in zip(axes, RUNS.items()):
            out = tmp / name.split()[0]
            cfg = dict(data=str(tmp / "data"), out=str(out), max_steps=600, batch_size=16, lr=2e-3, min_lr=2e-4,
                       warmup_steps=50, eval_interval=50, eval_batches=20, log_interval=10, progress=False,
                       final_eval=False, model=dict(block_size=64, n_layer=4, n_head=4, n_embd=192))
            cfg.update({k: v for k, v in extra.items() if k != "model"})
            cfg["model"].update(extra["model"])
            summary = arlm.train(cfg)
            ax.plot(*records(out, "loss"), label="training", color="tab:blue", alpha=0.8)
            steps, val = records(out, "val_loss")
            ax.plot(steps, val, label="validation", color="tab:orange", marker=".")
            best = min(range(len(val)), key=val.__getitem__)
            ax.axvline(steps[best], color="gray", ls=":", lw=1)
            ax.set_title(f"{name}\nbest val {val[best]:.3f} at step {steps[best]}"
                         + (" (stopped)" if summary["status"] == "early_stopped" else ""), fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            print(f"{name}: best validation loss {val[best]:.4f} at step {steps[best]}, status {summary['status']}")
        axes[0].set_ylabel("loss (nats/char)")
        axes[0].legend()
        axes[0].set_ylim(0.5, 3.5)
        fig.tight_layout()
        fig.savefig(OUT, dpi=100)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
