"""Hyperparameter sweeps: a grid or random search over config keys, each trial a normal training run.

    arlm sweep --config base.toml --param lr=1e-3,3e-3 --param model.n_embd=128,192 --out runs/sweep --max-steps 500
    arlm sweep --config base.toml --param lr=log:1e-4:1e-2 --param model.dropout=0:0.3 --trials 8 --out runs/sweep

``--param KEY=V1,V2,...`` lists values (a grid: every combination is a trial); ``KEY=A:B`` (uniform)
and ``KEY=log:A:B`` (log-uniform) are ranges, drawn at random for ``--trials`` trials (lists are then
sampled too). Keys are training keys (``lr``, ``batch_size``...) or ``model.``-prefixed model keys.
Each trial trains in OUT/trial-NNN with its values over the base config, bounded by ``--max-steps``
and/or ``--max-minutes``; a trial that fails on its values (say n_embd not divisible by n_head) is
recorded as failed and the sweep goes on. OUT/results.csv lists the trials sorted by validation loss
(the whole validation split at the end of each run), and is rewritten after every trial.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import random
from pathlib import Path
from typing import Any

from arlm.config import GPTConfig, TrainConfig, apply_preset, from_dict
from arlm.errors import UserError
from arlm.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

RESULTS = "results.csv"


def _value(text: str) -> Any:
    """A value as written: int, float, bool, else the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _number(text: str, key: str) -> float | int:
    value = _value(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--param {key}: '{text}' is not a number (ranges are A:B or log:A:B)")
    return value


def parse_param(spec: str) -> tuple[str, list[Any] | tuple[str, float, float]]:
    """``KEY=V1,V2`` -> (key, [values]); ``KEY=A:B`` / ``KEY=log:A:B`` -> (key, ("uniform"|"log", a, b))."""
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key or not rest.strip():
        raise UserError(f"--param '{spec}': write KEY=V1,V2,... or KEY=A:B or KEY=log:A:B")
    name = key.removeprefix("model.")
    fields = GPTConfig.__dataclass_fields__ if key.startswith("model.") else TrainConfig.__dataclass_fields__
    if name not in fields or name in ("model", "data", "out", "resume", "preset"):
        raise UserError(f"--param {key}: not a key a sweep can vary; use a training key (lr, batch_size, ...) "
                        f"or model.KEY (model.n_embd, ...)")
    if ":" in rest:
        parts = rest.split(":")
        kind = "log" if parts[0] == "log" else "uniform"
        bounds = parts[1:] if kind == "log" else parts
        if len(bounds) != 2:
            raise UserError(f"--param '{spec}': a range is A:B or log:A:B")
        a, b = (_number(x, key) for x in bounds)
        if kind == "log" and (a <= 0 or b <= 0):
            raise UserError(f"--param '{spec}': a log range needs positive bounds")
        if isinstance(a, int) and isinstance(b, int) and kind == "uniform":
            return key, ("int", a, b)
        return key, (kind, float(a), float(b))
    return key, [_value(v.strip()) for v in rest.split(",") if v.strip()]


def trials(params: list[str], n_random: int, seed: int) -> list[dict[str, Any]]:
    """The values of every trial: the full grid, or ``n_random`` random draws."""
    space = dict(parse_param(p) for p in params)
    if not space:
        raise UserError("nothing to sweep: add --param KEY=V1,V2 (or a range with --trials N)")
    ranges = [k for k, v in space.items() if isinstance(v, tuple)]
    if not n_random:
        if ranges:
            raise UserError(f"--param {ranges[0]} is a range: give --trials N for a random search")
        keys = list(space)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    rng = random.Random(seed)
    out = []
    for _ in range(n_random):
        values = {}
        for k, v in space.items():
            if isinstance(v, list):
                values[k] = rng.choice(v)
            elif v[0] == "int":
                values[k] = rng.randint(v[1], v[2])
            elif v[0] == "log":
                values[k] = float(f"{math.exp(rng.uniform(math.log(v[1]), math.log(v[2]))):.4g}")
            else:
                values[k] = float(f"{rng.uniform(v[1], v[2]):.4g}")
        out.append(values)
    return out


def _apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    d = dict(base, model=dict(base.get("model", {})))
    for k, v in values.items():
        if k.startswith("model."):
            d["model"][k.removeprefix("model.")] = v
        else:
            d[k] = v
    return d


def sweep(base: dict[str, Any], params: list[str], out: str | Path, n_random: int = 0, seed: int = 0,
          overwrite: bool = False) -> list[dict[str, Any]]:
    """Run every trial (see the module docstring); returns the result rows, best first."""
    from arlm.train.loop import train

    out = Path(out)
    todo = trials(params, n_random, seed)
    from_dict(TrainConfig, apply_preset(dict(base, data=base.get("data") or "-", out="-")), "sweep base config")
    if (out / RESULTS).exists() and not overwrite:
        raise UserError(f"{out} already holds a sweep ({RESULTS}); choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    keys = list(todo[0])
    rows: list[dict[str, Any]] = []
    for i, values in enumerate(todo):
        name = f"trial-{i:03d}"
        log.info("%s (%d of %d): %s", name, i + 1, len(todo), ", ".join(f"{k}={v}" for k, v in values.items()))
        row: dict[str, Any] = {"trial": name, **values}
        try:
            s = train(_apply(base, dict(values, out=str(out / name), overwrite=True, progress=False)))
            row.update(val_loss=s.get("val_loss", s.get("best_val_loss")), steps=s["step"],
                       tokens_per_s=s["tokens_per_s"], train_seconds=s["train_seconds"], status=s["status"])
        except UserError as e:
            log.warning("%s failed: %s", name, e)
            row.update(val_loss=None, steps=0, tokens_per_s=None, train_seconds=None, status=f"error: {e}")
        rows.append(row)
        rows.sort(key=lambda r: math.inf if r["val_loss"] is None else r["val_loss"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["trial", *keys, "val_loss", "steps", "tokens_per_s", "train_seconds", "status"])
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / RESULTS, buf.getvalue())
    return rows
