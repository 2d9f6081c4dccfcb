"""Recipe options on our corpus: the fast recipe with one option changed at a time, same steps.

    python bench/recipes.py [--config configs/shakespeare_char_fast.toml --data runs/data/shakespeare-char --steps 300]

Each variant is a normal ``arlm.train`` run (in this process, one after another) of ``--steps`` steps
with the base config's schedule; the loss is the validation estimate at the last step on
``--eval-batches`` fixed batches (150 x 32 windows of 64: about 300,000 of the 470,000 validation
characters), the same windows for every variant. Seconds are the training loop's wall time; on a
shared machine compare them within one run of this script. docs/training.md quotes the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import tomllib
from pathlib import Path

from arlm.runtime import cpu_has_bf16, cpu_info
from arlm.train.loop import train

VARIANTS: list[tuple[str, dict]] = [
    ("the recipe (Muon, bfloat16, wsd, qk_norm, GELU)", {}),
    ("optimizer = adamw (lr 5e-3 everywhere)", dict(optimizer="adamw")),
    ("optimizer = adamw, lr 2e-3", dict(optimizer="adamw", lr=2e-3)),
    ("qk_norm = false", dict(model=dict(qk_norm=False))),
    ("activation = relu2", dict(model=dict(activation="relu2"))),
    ("logit_softcap = 30", dict(model=dict(logit_softcap=30.0))),
    ("zero_init_proj = true", dict(model=dict(zero_init_proj=True))),
    ("untied, embedding_lr 0.03, head_lr 5e-3", dict(embedding_lr=0.03, head_lr=5e-3, model=dict(tie_embeddings=False))),
    ("lr_schedule = cosine (min_lr 5e-4)", dict(lr_schedule="cosine", min_lr=5e-4)),
    ("dtype = float32", dict(dtype="float32")),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/shakespeare_char_fast.toml")
    ap.add_argument("--data", default="runs/data/shakespeare-char")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-batches", type=int, default=150)
    ap.add_argument("--only", default="", help="comma-separated variant numbers (1-based) to run")
    a = ap.parse_args()
    base = tomllib.loads(Path(a.config).read_text())
    chosen = [VARIANTS[int(i) - 1] for i in a.only.split(",")] if a.only else VARIANTS
    print(f"{cpu_info()[0]}, bfloat16 instructions: {'yes' if cpu_has_bf16() else 'no'}; {a.config}, {a.steps} steps")
    print(f"{'variant':48}{'val loss':>9}{'seconds':>9}{'tokens/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, change in chosen:
            cfg = json.loads(json.dumps(base))
            cfg.update({k: v for k, v in change.items() if k != "model"})
            cfg["model"].update(change.get("model", {}))
            cfg.update(data=a.data, out=str(Path(tmp) / "run"), overwrite=True, progress=False, max_steps=a.steps,
                       eval_interval=a.steps, eval_batches=a.eval_batches, final_eval=False, target_loss=0.0)
            s = train(cfg)
            print(f"{name:48}{s['best_val_loss']:9.4f}{s['train_seconds']:9.1f}{s['tokens_per_s']:10,.0f}", flush=True)


if __name__ == "__main__":
    main()
