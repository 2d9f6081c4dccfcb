"""Draw docs/img/lr-schedules.png: the learning rate of every ``lr_schedule`` over a 2,000-step run.

    python docs/plots/lr_schedules.py

The curves come from ``arlm.train.optim.lr_at`` itself (and, for ``plateau``, ``plateau_update`` fed
a made-up validation curve that flattens out), so the picture is what training does.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from arlm.config import TrainConfig  # noqa: E402
from arlm.train.optim import lr_at, plateau_update  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "lr-schedules.png"


def main() -> None:
    base = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000)
    steps = range(base["max_steps"])
    fig, axes = plt.subplots(2, 4, figsize=(15, 6), sharex=True, sharey=True)
    for ax, (name, extra) in zip(axes.flat, [
        ("cosine", {}), ("linear", {}), ("constant", {}),
        ("step", dict(lr_step_size=500, lr_decay_factor=0.3)), ("cyclic", dict(lr_cycle_steps=200)),
        ("plateau", dict(plateau_patience=2, lr_decay_factor=0.3)), ("wsd", dict(lr_decay_fraction=0.2)),
    ]):
        cfg = TrainConfig(lr_schedule=name, **base, **extra)
        if name == "plateau":  # evaluations every 100 steps on a validation loss that levels off at step ~800
            plateau, best, lrs = {"scale": 1.0, "bad": 0}, float("inf"), []
            for s in steps:
                lrs.append(lr_at(s, cfg, plateau["scale"]))
                if (s + 1) % 100 == 0:
                    val = 2.0 + 1.5 / (1 + s / 200) if s < 800 else 2.3 + 0.01 * ((s // 100) % 2)
                    improved = val < best - cfg.min_delta
                    best = min(best, val)
                    plateau_update(plateau, improved, cfg)
        else:
            lrs = [lr_at(s, cfg) for s in steps]
        ax.plot(list(steps), lrs, color="tab:blue")
        label = ", ".join(f"{k}={v}" for k, v in extra.items())
        ax.set_title(f"lr_schedule = \"{name}\"" + (f"\n{label}" if label else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[-1].set_visible(False)  # seven schedules, eight places
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate")
    fig.suptitle("lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=2000", fontsize=10)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
