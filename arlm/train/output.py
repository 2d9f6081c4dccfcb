"""A run's output folder: what a run may write there, what ``--overwrite`` replaces, and its metrics log.

A run writes ``best/``, ``latest/``, ``metrics.jsonl`` and ``loss.png`` into ``--out`` and nothing
else; ``--overwrite`` deletes exactly those four and leaves any other file in the folder alone. The
folder is locked while a run writes it (:class:`arlm.io.lock.RunLock`), and a run starts by
finishing what a killed one left: an interrupted checkpoint swap is completed, temporary folders of
dead processes are removed, a half-written last metrics line is dropped.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from arlm.errors import UserError
from arlm.io.atomic import atomic_write_text, clean_stale, environment_failure, recover_dir
from arlm.io.checkpoint import BEST, LATEST
from arlm.io.paths import is_within, output_dir

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
PLOT = "loss.png"
RUN_FILES = (LATEST, BEST, METRICS, PLOT)


def check_output(out: str | Path, inputs: list[tuple[str, str]]) -> Path:
    """``--out`` resolved (links followed), refused if it is a file, cannot be written, or is the
    folder of one of ``inputs`` ((flag, path) pairs: prepared data, a model to start from)."""
    target = output_dir(out)
    for flag, path in inputs:
        if path and Path(path).is_dir() and is_within(target, path):
            raise UserError(f"--out {out} is the same folder as (or inside) {flag} {path}; a run's checkpoints would "
                            f"mix with it: choose another --out")
    return target


def finish_interrupted(out: Path) -> None:
    """Complete a checkpoint swap a kill interrupted, and remove temporary files of dead processes."""
    for name in RUN_FILES:
        if name in (BEST, LATEST):
            recover_dir(out / name)
        for stale in clean_stale(out / name):
            log.info("removed %s, left by a run that was killed while writing", stale.name)


def claim(out: Path, overwrite: bool) -> None:
    """A new run must not silently replace another run's checkpoints or mix into its metrics."""
    previous = [out / n for n in RUN_FILES if (out / n).exists()]
    if not previous:
        return
    if not overwrite:
        raise UserError(f"{out} already holds a training run; continue it with --resume {out}, "
                        f"choose another --out, or pass --overwrite to replace it (its {', '.join(RUN_FILES)})")
    for p in previous:
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as e:
            raise environment_failure(e, p) from None


class Metrics:
    """``metrics.jsonl``: one JSON record per line, appended as the run goes."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise environment_failure(e, self.path) from None

    def truncate(self, after_step: int) -> None:
        """On resume, drop records logged after the checkpoint (they will be produced again), and any
        line a kill or a full disk left unfinished."""
        if not self.path.exists():
            return
        keep, damaged = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                record = None
                damaged += 1
            if isinstance(record, dict) and isinstance(record.get("step", 0), int) and record.get("step", 0) <= after_step:
                keep.append(line)
        if damaged:
            log.warning("%s: dropped %d damaged line(s)", self.path, damaged)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
