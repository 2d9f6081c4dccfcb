"""The hostile-input battery's helpers: run a verb in-process, check the refusal contract, and
compare every file under a folder before and after.

The contract (docs/reliability.md): bad input gets one line on stderr, ``arlm VERB: error: ...``, exit
status 2 (1 for a failure of the environment: disk full, permission denied), no traceback, and every
file that existed before is byte-identical afterwards (contents, mode, links); a refused command
creates nothing either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from arlm.cli import main

ROOT = Path(__file__).resolve().parents[2]


def has(*parts: str) -> str:
    """A pattern that matches a line containing every one of ``parts`` (regexes), in any order."""
    return "".join(f"(?=.*{p})" for p in parts)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``roots`` (links not followed): kind, content hash / link target, mode."""
    out: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not os.path.lexists(root):
            continue
        stack = [root]
        while stack:
            p = stack.pop()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[str(p)] = ("dir", stat.S_IMODE(st.st_mode))
                stack.extend(sorted(p.iterdir()))
            else:
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
    return out


def run(capsys, argv) -> tuple[int, str, str]:
    """``arlm *argv`` in this process: (status, stdout, stderr). argparse's own exits count as statuses."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


GROUPS = ("ts", "image", "audio", "compress", "inspect")  # verbs with verbs of their own: errors name both


def verb_of(argv) -> str:
    """How errors name the command of ``argv``: ``generate``, or ``ts fit`` for a verb of a group."""
    argv = [str(a) for a in argv]
    return " ".join(argv[:2]) if argv[0] in GROUPS and len(argv) > 1 and not argv[1].startswith("-") else argv[0]


def check_refusal(code: int, err: str, verb: str, pattern: str | None, status: int, mid_run: bool = False) -> str:
    """The refusal contract on a command's status and stderr. ``mid_run``: the failure came after work had
    started, whose log lines (progress, model size) may precede the one error line, which must be last."""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.strip().splitlines()
    assert code == status, f"exit {code}, expected {status}: {err}"
    if mid_run:
        assert sum("error" in ln for ln in lines) == 1, err
        lines = lines[-1:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"arlm {verb}: error: "), lines[0]
    if pattern:
        assert re.search(pattern, lines[0]), f"{pattern!r} not in: {lines[0]}"
    return lines[0]


def refused(capsys, argv, pattern: str | None = None, keep: Path | None = None, status: int = 2) -> str:
    """Run ``argv``; assert the one-line refusal (matching ``pattern``) and, if ``keep`` is given, that
    nothing under it changed. Returns the error line."""
    before = snapshot(keep) if keep is not None else None
    code, out, err = run(capsys, argv)
    line = check_refusal(code, err, verb_of(argv), pattern, status)
    assert out == "", f"printed before the refusal: {out!r}"  # a prompt or header, then the error, is not a refusal
    if keep is not None:
        assert snapshot(keep) == before, "files changed under a refused command"
    return line


def arlm_process(*argv, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """``python -m arlm *argv`` as its own process (for kills, locks, closed streams)."""
    return subprocess.run([sys.executable, "-m", "arlm", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kw)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_json(path: Path, change) -> None:
    """Rewrite a JSON file through ``change(data) -> data`` (a hand edit)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(change(data), indent=1), encoding="utf-8")


def set_key(data: dict, dotted: str, value, delete: bool = False) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    if delete:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.fixture(scope="session")
def run_dir(trained_model) -> Path:
    """The tiny trained run (best/, latest/, metrics.jsonl): read-only, copy it before changing anything."""
    return trained_model


@pytest.fixture(scope="session")
def hf_dir(trained_model, tmp_path_factory) -> Path:
    """The tiny run exported as a Hugging Face GPT-2 folder (weights, config, generation config, tokenizer)."""
    out = tmp_path_factory.mktemp("hf") / "gpt2"
    assert main(["convert", "--to-hf", str(trained_model), "--out", str(out)]) == 0
    return out


def root_only(reason: str = "needs root (a tmpfs mount, or permissions that root ignores)"):
    return pytest.mark.skipif(os.geteuid() != 0, reason=reason)


def not_root(reason: str = "root ignores file permissions"):
    return pytest.mark.skipif(os.geteuid() == 0, reason=reason)


@pytest.fixture(scope="session")
def quantized_dir(trained_model, tmp_path_factory) -> Path:
    """The tiny run quantized to int4 (groups of 32, asymmetric: scales and offsets) by `arlm compress quantize`."""
    out = tmp_path_factory.mktemp("quantized") / "int4"
    assert main(["compress", "quantize", "--model", str(trained_model), "--out", str(out), "--asymmetric",
                 "--decode-tokens", "0", "--no-baseline"]) == 0
    return out


def tone(path: Path, freq: float = 220.0, seconds: float = 0.3, rate: int = 16000, seed: int = 0) -> Path:
    """A short noisy sine as a WAV file (soundfile), for the audio verbs."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)) + noise, rate)
    return path


@contextlib.contextmanager
def quiet():
    """arlm's log lines off (a session fixture built inside a test would print into that test's stderr)."""
    log = logging.getLogger("arlm")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


@pytest.fixture(scope="session")
def image_run(tmp_path_factory) -> Path:
    """The digits prepared (`data/`) and a GPT trained on them for a few steps (`run/`)."""
    from arlm.config import ImagePrepareConfig
    from arlm.data.images import prepare_images
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    root = tmp_path_factory.mktemp("image")
    with quiet():
        prepare_images(ImagePrepareConfig(source="digits", out=str(root / "data")))
        train(tiny_train_config(root / "data", root / "run", max_steps=4, model=dict(block_size=66)))
    return root


@pytest.fixture(scope="session")
def audio_run(tmp_path_factory) -> Path:
    """Eight tones prepared (`data/`, two held out) and a GPT trained on them for a few steps (`run/`)."""
    from arlm.config import AudioPrepareConfig
    from arlm.data.audio import prepare_audio
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    root = tmp_path_factory.mktemp("audio")
    (root / "wav").mkdir()
    for i in range(8):
        tone(root / "wav" / f"{i}.wav", 200 + 40 * i, seed=i)
    with quiet():
        prepare_audio(AudioPrepareConfig(inputs=[str(root / "wav")], out=str(root / "data"), test_fraction=0.25))
        train(tiny_train_config(root / "data", root / "run", max_steps=4, model=dict(block_size=64)))
    return root


@pytest.fixture(scope="session")
def series_run(tmp_path_factory) -> Path:
    """A neural forecaster: synthetic series prepared (`data/`) and a GPT trained on them for a few steps (`run/`)."""
    from arlm.config import SeriesPrepareConfig
    from arlm.timeseries.neural import prepare_series
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    root = tmp_path_factory.mktemp("series")
    with quiet():
        prepare_series(SeriesPrepareConfig(out=str(root / "data"), synthetic=60, context_length=24,
                                           prediction_length=8, bins=256))
        train(tiny_train_config(root / "data", root / "run", max_steps=4, model=dict(block_size=33)))
    return root
