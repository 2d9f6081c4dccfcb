"""What a run saves in ``latest/trainer_state.pt`` and restores on ``--resume``: one object does both,
so what is restored cannot drift from what was saved, and a damaged or foreign state file is named
before anything is changed.

Determinism: the data order comes from its own ``torch.Generator``, dropout from the global torch
RNG, periodic evaluation uses a fixed set of windows and no RNG at all. All of that is saved here,
so a resumed run's losses equal an uninterrupted run's exactly (CPU, float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from arlm.config import TrainConfig, to_dict, validated
from arlm.errors import UserError
from arlm.io.atomic import recover_dir
from arlm.io.checkpoint import LATEST, STATE, open_checkpoint
from arlm.train import distributed


@dataclass
class Progress:
    """The run's counters."""

    step: int = 0
    best_val: float = math.inf
    bad_evals: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    rows_drawn: int = 0  # sequences drawn so far (replay takes floor(rows_drawn * replay_fraction) of them)
    plateau: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "bad": 0})  # the plateau schedule's


# The saved dict: key -> type (numbers may be ints where floats are expected); keys after the first
# seven are optional (older runs lack them).
_SAVED: dict[str, type] = {"step": int, "best_val": float, "bad_evals": int, "tokens_seen": int, "elapsed_s": float,
                           "optimizer": dict, "rng": dict, "sampler": dict, "scaler": dict, "rows_drawn": int,
                           "plateau": dict}
_REQUIRED = ("step", "best_val", "bad_evals", "tokens_seen", "elapsed_s", "optimizer", "rng")


def _check_saved(saved: Any, source: str) -> None:
    if not isinstance(saved, dict):
        raise UserError(f"{source} is not a trainer state arlm wrote (found {type(saved).__name__}); resume from "
                        f"another run or start a new one")
    for key, kind in _SAVED.items():
        if key not in saved:
            if key in _REQUIRED:
                raise UserError(f"{source} is not a trainer state arlm wrote: '{key}' is missing")
            continue
        value = saved[key]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            raise UserError(f"{source}: '{key}' must be {kind.__name__}, found {type(value).__name__}")
    rng = saved["rng"]
    if not all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("torch", "data")):
        raise UserError(f"{source}: the random-number state ('rng') is damaged")
    if saved["step"] < 0 or saved["tokens_seen"] < 0 or math.isnan(saved["best_val"]):
        raise UserError(f"{source}: the step, token count or best loss is impossible")


class TrainState:
    """The progress counters plus every stateful object of the loop: optimizer, loss scaler, the data
    sampler and its generator, the global RNG."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 sampler, data_gen: torch.Generator):
        self.model, self.optimizer, self.scaler, self.sampler, self.data_gen = model, optimizer, scaler, sampler, data_gen
        self.progress = Progress()

    def state_dict(self, optimizer_state: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
        """What ``latest/trainer_state.pt`` holds (``optimizer_state``: gathered, keyed by parameter name)."""
        p = self.progress
        rng = {"torch": torch.get_rng_state(), "data": self.data_gen.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"optimizer": optimizer_state, "scaler": self.scaler.state_dict(), "rng": rng,
                "sampler": self.sampler.state_dict(), "rows_drawn": p.rows_drawn, "step": p.step, "best_val": p.best_val,
                "bad_evals": p.bad_evals, "plateau": dict(p.plateau), "tokens_seen": p.tokens_seen, "elapsed_s": elapsed_s}

    def load_state_dict(self, saved: Any, source: str) -> None:
        """Restore what :meth:`state_dict` saved; ``source`` names the file in errors."""
        _check_saved(saved, source)
        try:
            if all(isinstance(k, int) for k in saved["optimizer"].get("state", {})):  # keyed by position (arlm <= 0.4)
                self.optimizer.load_state_dict(saved["optimizer"])
            else:
                distributed.load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
            if "sampler" in saved:
                self.sampler.load_state_dict(saved["sampler"])
            if "scaler" in saved:
                self.scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(saved["rng"]["torch"])
            self.data_gen.set_state(saved["rng"]["data"])
            if "cuda" in saved["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise UserError(f"{source} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                            f"resume from another checkpoint or start a new run") from None
        plateau = saved.get("plateau", {})
        self.progress = Progress(step=saved["step"], best_val=float(saved["best_val"]), bad_evals=saved["bad_evals"],
                                 tokens_seen=saved["tokens_seen"], elapsed_s=float(saved["elapsed_s"]),
                                 rows_drawn=saved.get("rows_drawn", 0),
                                 plateau={"scale": float(plateau.get("scale", 1.0)), "bad": int(plateau.get("bad", 0))})


def run_folder(path: str | Path) -> tuple[Path, Path]:
    """(the run's output folder, its latest/ checkpoint) for ``--resume PATH``: a training output
    folder, or its latest/ checkpoint itself."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"nothing to resume: {p} does not exist")
    if (p / LATEST).exists() or (p / (LATEST + ".old")).exists():
        recover_dir(p / LATEST)
        return p, p / LATEST
    if (p / STATE).exists():
        return p.parent, p
    raise UserError(f"nothing to resume in {p}: no {LATEST}/ checkpoint (give the run's --out folder)")


def resume_config(path: str | Path, overrides: dict[str, Any]) -> tuple[Path, TrainConfig]:
    """The latest/ checkpoint to resume and the config to resume with: the saved one, writing to the
    folder given (wherever the run was first written), plus ``overrides`` that keep it compatible.

    Training-length keys (``max_steps``, ``max_minutes``, ``eval_interval``...) may change; the model
    shape and the data may not, since the saved weights and optimizer state depend on them.
    """
    out, latest = run_folder(path)
    ckpt = open_checkpoint(latest)
    if ckpt.info.train is None:
        raise UserError(f"cannot resume from {ckpt.path}: it was not written by `arlm train`")
    base = to_dict(ckpt.info.train)
    for key, value in (overrides.get("model") or {}).items():
        if key in base["model"] and base["model"][key] != value:
            raise UserError(
                f"cannot resume with a different model: {key} is {base['model'][key]} in {ckpt.path} but {value} "
                f"was given; drop that option, or start a new run with --out"
            )
    for key in ("data", "preset"):
        if key in overrides and overrides[key] and overrides[key] != base.get(key):
            raise UserError(f"cannot resume with a different {key} ({overrides[key]!r} vs {base.get(key)!r} in {ckpt.path}); "
                            f"start a new run instead")
    saved_optimizer = base.get("optimizer", "adamw")  # (runs from before the key trained with AdamW)
    if overrides.get("optimizer", saved_optimizer) != saved_optimizer:
        raise UserError(f"cannot resume with a different optimizer ({overrides['optimizer']!r} vs {saved_optimizer!r} in "
                        f"{ckpt.path}): its saved state belongs to {saved_optimizer}; drop --optimizer, or start a new run")
    if overrides.get("out") and Path(overrides["out"]).resolve() != out.resolve():
        raise UserError(f"--out cannot move a resumed run: it continues in {out}; copy that folder to "
                        f"{overrides['out']} and resume the copy instead")
    merged = dict(base)
    merged.update({k: v for k, v in overrides.items() if k != "model"})
    merged.update(resume=str(path), out=str(out))
    merged.pop("preset", None)  # the model table already holds the preset's values
    return ckpt.path, validated(TrainConfig, merged, f"{ckpt.config_file} (with the options given)", name_source=False)
