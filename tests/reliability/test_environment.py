"""The environment fails: a full disk, a read-only folder, a kill -9 in the middle of a write, two
writers on one run. Nothing of the user's is lost or half-written, and the next run cleans up."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CORPUS
from tests.reliability.conftest import ROOT, arlm_process, check_refusal, refused, run, snapshot


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A small RAM disk at ``path`` (as root); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def fill(path: Path) -> None:
    """Use up all the space of the file system holding ``path``."""
    with contextlib.suppress(OSError), open(path / "filler", "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


def leftovers(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*") if p.name.endswith((".tmp", ".old"))]


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text((CORPUS / "hamlet.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return d


# -- full disk ---------------------------------------------------------------------------------------


def test_prepare_on_a_full_disk_keeps_the_previous_preparation(capsys, corpus, tmp_path):
    with tmpfs(tmp_path / "disk", "160k") as disk:
        out = disk / "data"
        code, _, err = run(capsys, ["prepare", corpus, "--out", out])
        assert code == 0, err
        before = snapshot(disk)
        (corpus / "b.txt").write_text((CORPUS / "lear.txt").read_text(encoding="utf-8"), encoding="utf-8")
        code, _, err = run(capsys, ["prepare", corpus, "--out", out])
        check_refusal(code, err, "prepare", r"No space left on device", 1)
        assert snapshot(disk) == before and not leftovers(disk)


def test_training_on_a_full_disk(capsys, char_data, tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as disk:
        code, _, err = run(capsys, ["train", "--data", char_data, "--out", disk / "run", "--max-steps", "2",
                                    "--eval-interval", "1", "--no-progress", "--device", "cpu", "--n-embd", "64",
                                    "--n-head", "2", "--n-layer", "2", "--block-size", "16"])
        check_refusal(code, err, "train", r"run.*No space left on device", 1, mid_run=True)
        assert not leftovers(disk)


def test_predictions_on_a_full_disk(capsys, trained_model, tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"prompt": "To", "reference": "be"}) + "\n")
    with tmpfs(tmp_path / "disk", "64k") as disk:
        (disk / "p.jsonl").write_text(json.dumps({"prompt": "To", "prediction": "x", "reference": "be"}) + "\n")
        fill(disk)
        before = snapshot(disk)
        code, _, err = run(capsys, ["eval", "--model", trained_model, "--task", task, "--predictions-out",
                                    disk / "p.jsonl", "--max-new-tokens", "30", "--device", "cpu"])
        check_refusal(code, err, "eval", r"p\.jsonl.*No space left on device", 1)
        assert snapshot(disk) == before


def test_read_only_outputs_are_refused_before_any_work(capsys, corpus, trained_model, char_data, tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "existing").mkdir()
        read_only(disk)
        for argv in (["prepare", corpus, "--out", disk / "data"],
                     ["train", "--data", char_data, "--out", disk / "run", "--no-progress"],
                     ["convert", "--to-hf", trained_model, "--out", disk / "hf"],
                     ["sweep", "--data", char_data, "--out", disk / "sw", "--param", "lr=1e-3"]):
            refused(capsys, argv, r"disk.*(read-only|Read-only)", keep=disk)


def test_unwritable_folder_for_a_non_root_user(capsys, corpus, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    refused(capsys, ["prepare", corpus, "--out", locked / "data"], r"locked.*(permission|Permission)", keep=tmp_path)


# -- kill -9 in the middle of a write -----------------------------------------------------------------


def start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "arlm", *map(str, argv)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_while(proc: subprocess.Popen, ready, within: float, rng: random.Random) -> None:
    """Wait for ``ready()``, then kill -9 ``proc`` at a random moment within ``within`` seconds."""
    deadline = time.monotonic() + 180
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the process never got ready"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, within))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_during_checkpoint_writes(capsys, char_data, tmp_path):
    """A run killed at random moments while it saves every step: best/ and latest/ always load, and
    the resumed run removes what the kill left behind."""
    import arlm

    rng = random.Random(int(os.environ.get("ARLM_KILL_SEED", "0")))
    out = tmp_path / "run"
    args = ["--data", char_data, "--out", out, "--eval-interval", "1", "--eval-batches", "1", "--batch-size", "2",
            "--no-progress", "--device", "cpu", "--n-layer", "2", "--n-embd", "192", "--n-head", "2",
            "--block-size", "16", "--max-steps", "100000"]
    proc = start("train", *args)
    kill_while(proc, lambda: (out / "latest").is_dir(), 1.5, rng)
    for name in ("best", "latest"):
        arlm.load(out / name, device="cpu")  # whole, never half-written
    saved = _step(out)
    proc = start("train", "--resume", out, "--max-steps", "100000", "--no-progress")
    kill_while(proc, lambda: _step(out) > saved + 1, 1.5, rng)
    arlm.load(out / "latest", device="cpu")
    code, _, err = run(capsys, ["train", "--resume", out, "--max-steps", str(_step(out) + 1), "--no-progress"])
    assert code == 0, err
    assert not leftovers(out)


def _step(out: Path) -> int:
    try:
        return json.loads((out / "latest" / "config.json").read_text())["step"]
    except (OSError, ValueError):  # between the two renames of a save
        return -1


def test_kill_during_prepare(capsys, tmp_path):
    """prepare killed while it replaces an earlier preparation: the folder holds the old or the new one, whole."""
    from arlm.data.loader import TokenData

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("hamlet.txt", "lear.txt", "coriolanus.txt", "richard_iii.txt"):
        shutil.copy(CORPUS / name, corpus / name)
    out = tmp_path / "data"
    code, _, err = run(capsys, ["prepare", corpus, "--out", out, "--tokenizer", "bpe", "--vocab-size", "300"])
    assert code == 0, err
    rng = random.Random(1)
    proc = start("prepare", corpus, "--out", out, "--tokenizer", "bpe", "--vocab-size", "400")
    kill_while(proc, lambda: True, 4.0, rng)
    data = TokenData.open(out)
    assert data.meta.vocab_size in (300, 400) and len(data.train) == data.meta.train_tokens
    code, _, err = run(capsys, ["prepare", corpus, "--out", out])
    assert code == 0 and not leftovers(tmp_path), err


def test_kill_during_convert(capsys, trained_model, tmp_path):
    out = tmp_path / "hf"
    code, _, err = run(capsys, ["convert", "--to-hf", trained_model, "--out", out])
    assert code == 0, err
    before = snapshot(out)
    proc = start("convert", "--to-hf", trained_model, "--out", out, "--overwrite")
    kill_while(proc, lambda: True, 3.0, random.Random(2))
    from arlm.io.atomic import recover_dir

    recover_dir(out)
    assert snapshot(out) == before or (out / "config.json").is_file() and (out / "model.safetensors").is_file()


# -- two writers ------------------------------------------------------------------------------------


def test_two_trainings_on_one_folder(char_data, tmp_path):
    out = tmp_path / "run"
    args = ["--data", char_data, "--out", out, "--no-progress", "--device", "cpu", "--n-layer", "1", "--n-embd", "16",
            "--n-head", "2", "--block-size", "16", "--eval-interval", "50", "--max-steps", "100000"]
    first = start("train", *args)
    try:
        deadline = time.monotonic() + 180
        while not (out / ".lock").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = arlm_process("train", *args, "--overwrite")
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and f"process {first.pid}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.slow
def test_many_kills_during_checkpoint_writes(capsys, char_data, tmp_path):
    """Eight kill -9s at random moments of a run that saves every step: after each, both checkpoints load
    whole (a writer that wrote in place fails this in practice on the first kills)."""
    import arlm

    rng = random.Random(7)
    out = tmp_path / "run"
    # 7M parameters (28 MB checkpoints) on a batch of 2 x 8 tokens: most of a step's time is spent saving
    args = ["--eval-interval", "1", "--eval-batches", "1", "--batch-size", "2", "--no-progress", "--device", "cpu",
            "--n-layer", "4", "--n-embd", "384", "--n-head", "2", "--block-size", "8", "--max-steps", "100000"]
    proc = start("train", "--data", char_data, "--out", out, *args)
    kill_while(proc, lambda: (out / "latest").is_dir(), 0.3, rng)
    for _ in range(7):
        saved = _step(out)
        proc = start("train", "--resume", out, "--max-steps", "100000", "--no-progress")
        kill_while(proc, lambda: _step(out) > saved, 0.3, rng)
        for name in ("best", "latest"):
            arlm.load(out / name, device="cpu")
    code, _, err = run(capsys, ["train", "--resume", out, "--max-steps", str(_step(out) + 1), "--no-progress"])
    assert code == 0 and not leftovers(out), err


def test_kill_during_eval_predictions(capsys, trained_model, tmp_path):
    """eval killed while it works towards (or writes) its predictions: the previous file is intact or the new
    one whole, and the next run leaves no temporary file beside it."""
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"To be {'o' * i}", "reference": "x"}) + "\n" for i in range(40)))
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"prompt": "old", "prediction": "old", "reference": "old"}\n')
    before = preds.read_bytes()
    proc = start("eval", "--model", trained_model, "--task", task, "--predictions-out", preds, "--max-new-tokens", "20",
                 "--device", "cpu")
    kill_while(proc, lambda: True, 5.0, random.Random(3))
    lines = preds.read_text().splitlines()
    assert preds.read_bytes() == before or (len(lines) == 40 and all(set(json.loads(ln)) == {"prompt", "prediction", "reference"}
                                                                    for ln in lines))
    code, _, err = run(capsys, ["eval", "--model", trained_model, "--task", task, "--predictions-out", preds,
                                "--max-new-tokens", "2", "--device", "cpu"])
    assert code == 0 and not leftovers(tmp_path), err
