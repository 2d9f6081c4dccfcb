"""Data-parallel training with torchrun (2 CPU processes, gloo): the same loss curve as one process
with the same global batch, and checkpoints that move between one process and several."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_MODEL


def _flags(data, out, **kw) -> list[str]:
    cfg = dict(data=data, out=out, eval_interval=4, eval_batches=2, log_interval=1, warmup_steps=2, lr=3e-3,
               lr_schedule="constant", sampling="epoch", no_progress=True, device="cpu", no_final_eval=True,
               **TINY_MODEL, **kw)
    flags = []
    for k, v in cfg.items():
        flags += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return flags


def _train(flags: list[str], processes: int = 1) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on a 2-core machine
    run = subprocess.run([sys.executable, *launcher, "-m", "arlm", "train", *flags, "--threads", "1"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]


def _curve(out, key="loss"):
    return {r["step"]: r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r}


def _close(a: dict, b: dict, tol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


# DDP with Muon runs with the slow tests (make test-slow): each case starts torchrun twice (~30 s), and
# the default run stays under 10 minutes with DDP and FSDP, which exercise the same all-reduce path.
@pytest.mark.parametrize("engine", ["ddp", "fsdp", pytest.param("ddp-muon", marks=pytest.mark.slow)])
def test_two_processes_equal_one_with_the_same_global_batch(engine, char_data, tmp_path):
    """Global batch 8 as 2 processes x 2 sequences x 2 accumulation steps, and as 1 process x 4 x 2:
    equal training and validation losses (float32, within 1e-5). Then each run continues from the
    other's kind of checkpoint (one process from the distributed one, two processes from the single
    one) and the two continuations agree too. Muon orthogonalises its update in bfloat16 (torch.optim.Muon, as
    Jordan et al.), which turns the all-reduce's ~1e-7 differences of summation order into ~1e-5 in the loss."""
    tol = 3e-4 if "muon" in engine else 1e-5
    extra = {"ddp": [], "fsdp": ["--fsdp"], "ddp-muon": ["--optimizer", "muon"]}[engine]
    single, multi = tmp_path / "single", tmp_path / "multi"
    _train(_flags(char_data, single, max_steps=8, batch_size=4, grad_accum_steps=2) + (extra if "muon" in engine else []))
    _train(_flags(char_data, multi, max_steps=8, batch_size=2, grad_accum_steps=2) + extra, processes=2)
    assert len(_curve(single)) == 8
    assert _close(_curve(multi), _curve(single), tol)
    assert _close(_curve(multi, "val_loss"), _curve(single, "val_loss"), tol)
    lines = lambda out: (out / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert len(lines(multi)) == len(lines(single))  # one process wrote them, once

    # distributed checkpoint -> one process; single-process checkpoint -> two processes
    _train(["--resume", str(multi), "--max-steps", "12", "--batch-size", "4", "--threads", "1"])
    _train(["--resume", str(single), "--max-steps", "12", "--batch-size", "2", *extra], processes=2)
    later = {s: v for s, v in _curve(single).items() if s > 8}
    assert len(later) == 4
    assert _close({s: v for s, v in _curve(multi).items() if s > 8}, later, tol)


def test_accumulation_averages_gradients_only_on_the_last_micro_batch(tmp_path):
    """DDP's all-reduce runs once per optimizer step, not once per micro-batch (counted with a
    communication hook, in a one-process gloo group)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from arlm.train import distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ctx = distributed.Context(rank=0, world_size=1)
        model = DistributedDataParallel(torch.nn.Linear(4, 4))
        calls = []

        def hook(state, bucket):
            calls.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        model.register_comm_hook(None, hook)
        for micro in range(4):
            with distributed.gradient_sync(model, micro == 3):
                model(torch.randn(2, 4)).sum().backward()
        assert len(calls) == 1
        assert distributed.mean(torch.tensor(3.0), ctx).item() == 3.0
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two torchrun starts (~45 s); the default run keeps DDP and FSDP of the GPT
def test_an_encoder_decoder_trains_the_same_in_two_processes(char_data, tmp_path):
    """Source/target pairs through DDP: rows of different lengths padded per process, each process's
    loss weighted by its share of the step's targets (distributed.share_of_all), so the training and
    validation losses equal one process's with the same global batch (within 1e-5)."""
    import random

    chars = [c for c in json.loads((char_data / "tokenizer.json").read_text())["chars"] if c.isalpha()][:12]
    rng = random.Random(0)
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w") as f:
        for _ in range(80):
            s = "".join(rng.choice(chars) for _ in range(rng.randint(3, 12)))
            f.write(json.dumps({"source": s, "target": s[::-1]}) + "\n")
    shape = ["--type", "seq2seq", "--tokenizer", str(char_data), "--n-decoder-layer", "1", "--max-source-len", "16"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    # eval_batches x batch_size rows cover the 8 validation pairs in both runs
    _train(_flags(pairs, single, max_steps=6, batch_size=4, grad_accum_steps=2) + shape + ["--eval-batches", "4"])
    _train(_flags(pairs, multi, max_steps=6, batch_size=2, grad_accum_steps=2) + shape + ["--eval-batches", "4"],
           processes=2)
    assert len(_curve(single)) == 6
    assert _close(_curve(multi), _curve(single)), (_curve(multi), _curve(single))
    assert _close(_curve(multi, "val_loss"), _curve(single, "val_loss"))
