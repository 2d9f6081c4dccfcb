"""Training speed: one arlm optimizer step vs transformers ``GPT2LMHeadModel`` + ``torch.optim.AdamW``.

    python bench/train.py [--n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --steps 20 --rounds 5]
    python bench/train.py --device cuda --dtype bfloat16 --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 64
    python bench/train.py --vs-nanogpt ~/nanoGPT [--data runs/data/shakespeare-char --rounds 3]

The default shape is nanoGPT's CPU recipe for Shakespeare characters (4 layers, 4 heads, 128 wide,
context 64, batch 12, vocabulary 65, no dropout, no biases, exact GELU as nanoGPT's model.py;
`--activation gelu_tanh` for GPT-2's). Both models start from the same weights
(arlm's, exported with arlm.interop.hf; GPT-2 always has biases, added as zeros) and train on the same
random batches (float32 unless ``--dtype`` picks autocast: bfloat16, or float16 with a gradient
scaler on CUDA, the same for both). arlm's step is ``arlm.train.loop.optimizer_step`` (what ``arlm train`` runs:
forward, loss, backward, gradient clipping, AdamW with arlm's settings: fused where PyTorch has it);
the transformers step is the usual loop (``model(x, labels=...)``, backward, clipping, AdamW).
Variants run alternately, `--steps` steps each per round, for `--rounds` rounds; the first round is
warm-up (and compilation) and is dropped; medians are printed, with each variant's model FLOPs
utilisation (arlm.train.throughput: the FLOPs a step needs over a measured matrix-product peak in the
same dtype on the same device).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from arlm.config import GPTConfig, TrainConfig
from arlm.interop.hf import hf_config, hf_layout, hf_state_from_arlm
from arlm.model import build_model
from arlm.runtime import DTYPES, autocast
from arlm.train.loop import optimizer_step
from arlm.train.optim import make_optimizer
from arlm.train.throughput import flops_per_token, matmul_peak


ROOT = Path(__file__).resolve().parents[1]
# nanoGPT's README recipe for a CPU; configs/nanogpt_cpu.toml is the same run in arlm's keys
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def nanogpt_data(data: Path, work: Path) -> str:
    """nanoGPT's data folder (data/<name>/{train,val}.bin, meta.pkl) under ``work`` holding the very
    tokens of an arlm character-level folder (uint16 ids, the same split); returns <name>."""
    import json

    meta = json.loads((data / "meta.json").read_text())
    if meta.get("dtype") != "uint16":
        raise SystemExit(f"{data}: nanoGPT reads uint16 token files; prepare a character-level folder")
    folder = work / "data" / "arlm"
    folder.mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copyfile(data / f"{split}.bin", folder / f"{split}.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": meta["vocab_size"]}, f)
    return "arlm"


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Wall seconds of a whole process, and its standard output."""
    t = time.perf_counter()
    run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if run.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return wall, run.stdout


def run_nanogpt(nanogpt: Path, work: Path, steps: int) -> tuple[float, float]:
    """nanoGPT's CPU recipe for ``steps`` iterations: (wall seconds, its last validation estimate)."""
    cmd = [sys.executable, str(nanogpt / "train.py"), str(nanogpt / "config" / "train_shakespeare_char.py"),
           *NANOGPT_CPU, f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--dataset=arlm",
           f"--out_dir={work / 'out'}"]
    wall, out = timed(cmd, work)
    vals = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", out)
    return wall, float(vals[-1])


def run_arlm(config: str, data: Path, out: Path, flags: list[str]) -> tuple[float, dict]:
    """``arlm train`` as a user runs it: (wall seconds, the summary it printed as JSON)."""
    import json

    cmd = [sys.executable, "-m", "arlm", "train", "--config", config, "--data", str(data), "--out", str(out),
           "--overwrite", "--no-progress", "--json", *flags]
    wall, text = timed(cmd, ROOT)
    return wall, json.loads(text.strip().splitlines()[-1])


def vs_nanogpt(args) -> None:
    """nanoGPT (a checkout at --vs-nanogpt) and arlm alternately on the same tokens: the 300-step speed of
    nanoGPT's recipe, then the time arlm's fast recipe takes to nanoGPT's 2,000-iteration validation loss."""
    nanogpt, data = Path(args.vs_nanogpt).expanduser(), Path(args.data)
    if not (nanogpt / "train.py").is_file() or not (nanogpt / "configurator.py").is_file():
        raise SystemExit(f"{nanogpt} is not a nanoGPT checkout (no train.py / configurator.py)")
    from arlm.runtime import cpu_has_bf16, cpu_info

    print(f"CPU: {cpu_info()[0]} ({os.cpu_count()} cores; bfloat16 instructions: {'yes' if cpu_has_bf16() else 'no'}); "
          f"torch {torch.__version__}; data {data}; {args.rounds} alternating rounds")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "configurator.py").symlink_to(nanogpt / "configurator.py")  # nanoGPT reads it from its working folder
        nanogpt_data(data, work)
        speed_rounds(args, nanogpt, data, work)
        if args.quality_rounds:
            quality_rounds(args, nanogpt, data, work)


def speed_rounds(args, nanogpt: Path, data: Path, work: Path) -> None:
    from arlm.runtime import cpu_has_bf16

    n = args.vs_steps
    same = ["--max-steps", str(n), "--no-final-eval"]
    variants = {"nanoGPT": lambda: run_nanogpt(nanogpt, work, n)[0],
                "arlm float32": lambda: run_arlm("configs/nanogpt_cpu.toml", data, work / "a", same)[0],
                "arlm float32 + whole-split evaluation": lambda: run_arlm("configs/nanogpt_cpu.toml", data, work / "a",
                                                                          same[:2])[0]}
    if cpu_has_bf16():
        variants["arlm bfloat16"] = lambda: run_arlm("configs/nanogpt_cpu.toml", data, work / "a",
                                                     same + ["--dtype", "bfloat16"])[0]
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for k, fn in variants.items():
            times[k].append(fn())
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    base = statistics.median(times["nanoGPT"])
    print(f"\nnanoGPT's CPU recipe, {n} steps, whole process (median of {args.rounds}; arlm: configs/nanogpt_cpu.toml, "
          f"the same evaluations as nanoGPT's unless said)")
    for k, v in times.items():
        print(f"  {k:42s} {statistics.median(v):6.1f} s   speed {base / statistics.median(v):5.2f}x nanoGPT's")


def quality_rounds(args, nanogpt: Path, data: Path, work: Path) -> None:
    print(f"\ntime to quality: nanoGPT's recipe for {args.quality_steps} iterations, then arlm {args.fast_config} "
          f"--target-loss <nanoGPT's final estimate> (arlm's loss: the whole validation split)")
    rows = []
    for r in range(args.quality_rounds):
        wall_n, target = run_nanogpt(nanogpt, work, args.quality_steps)
        wall_a, summary = run_arlm(args.fast_config, data, work / "fast", ["--target-loss", str(target)])
        rows.append((wall_n, target, wall_a, summary["val_loss"], summary["step"]))
        print(f"  round {r + 1}: nanoGPT {wall_n:.1f} s to val {target:.4f}; arlm {wall_a:.1f} s "
              f"({summary['step']} steps) to {summary['val_loss']:.4f} on the whole split: {wall_a / wall_n:.2f}x "
              f"the time{'' if summary['val_loss'] <= target else ' (target NOT reached)'}", flush=True)
    ratio = statistics.median(a / n for n, _, a, _, _ in rows)
    print(f"  median time ratio arlm / nanoGPT: {ratio:.2f}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--vocab-size", type=int, default=65)
    ap.add_argument("--activation", default="gelu", choices=("gelu", "gelu_tanh"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled arlm variant")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled variant "
                    "(reduce-overhead: CUDA graphs, as `arlm train --compile-mode reduce-overhead`)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="autocast dtype (float16: CUDA only)")
    ap.add_argument("--also-bfloat16", action="store_true", help="add arlm's step under bfloat16 autocast (per-step ratio)")
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"), help="arlm's optimizer")
    ap.add_argument("--vs-nanogpt", metavar="DIR", help="a nanoGPT checkout: run its CPU recipe and arlm's side by side")
    ap.add_argument("--data", default="runs/data/shakespeare-char", help="--vs-nanogpt: an arlm character-level data folder")
    ap.add_argument("--vs-steps", type=int, default=300, help="--vs-nanogpt: steps of the speed comparison")
    ap.add_argument("--quality-steps", type=int, default=2000, help="--vs-nanogpt: nanoGPT's iterations to the target loss")
    ap.add_argument("--quality-rounds", type=int, default=3, help="--vs-nanogpt: rounds of the time-to-quality comparison (0: skip)")
    ap.add_argument("--fast-config", default="configs/shakespeare_char_fast.toml", help="--vs-nanogpt: arlm's recipe to the target")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.vs_nanogpt:
        args.rounds = min(args.rounds, 3) if args.rounds == 6 else args.rounds  # the default of 6 is for step timing
        return vs_nanogpt(args)
    compare_steps(args)


def compare_steps(args) -> None:
    """arlm's optimizer step against transformers' usual loop on the same weights and batches."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    mcfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=0.0, bias=False, activation=args.activation)
    tcfg = TrainConfig(data="-", out="-", batch_size=args.batch_size, lr=1e-3, weight_decay=0.1, beta2=0.99,
                       grad_clip=1.0, optimizer=args.optimizer, model=mcfg)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    ours = build_model(mcfg)
    hf = GPT2LMHeadModel(GPT2Config(**hf_config(mcfg, "gpt2", None, None)))
    hf.load_state_dict(hf_state_from_arlm(ours, hf_layout(mcfg)), strict=False)
    hf.config.use_cache = False
    compiled = build_model(mcfg)
    compiled.load_state_dict(ours.state_dict())
    ours, hf, compiled = ours.to(device), hf.to(device), compiled.to(device)
    # transformers' usual loop: AdamW as PyTorch picks it for the device (foreach on CUDA)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    ours_opt = make_optimizer(ours, tcfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    hf_scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    compiled_opt = make_optimizer(compiled, tcfg, device)
    compiled_fn = torch.compile(compiled, mode=None if args.compile_mode == "default" else args.compile_mode)
    graphs = device.type == "cuda" and args.compile_mode in ("reduce-overhead", "max-autotune")

    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.block_size + 1), generator=g).to(device)
               for _ in range(args.steps)]

    def arlm_steps(model, fn, opt, step_dtype=dtype):
        def run():
            model.train()
            for b in batches:
                if graphs and fn is compiled_fn:
                    torch.compiler.cudagraph_mark_step_begin()  # as the training loop does
                optimizer_step(fn, model, opt, scaler, [(b[:, :-1], b[:, 1:])], 1e-3, tcfg, device, step_dtype)
            sync()
        return run

    def hf_steps():
        hf.train()
        for b in batches:
            x = b[:, :-1]
            with autocast(device, dtype):
                loss = hf(input_ids=x, labels=x).loss  # transformers shifts the labels itself (T - 1 targets)
            hf_scaler.scale(loss).backward()
            hf_scaler.unscale_(hf_opt)
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_scaler.step(hf_opt)
            hf_scaler.update()
            hf_opt.zero_grad(set_to_none=True)
        sync()

    variants = {"transformers GPT2LMHeadModel + AdamW": hf_steps, "arlm": arlm_steps(ours, ours, ours_opt)}
    if not args.no_compile:
        variants["arlm --compile" + ("" if args.compile_mode == "default" else f" ({args.compile_mode})")] = arlm_steps(compiled, compiled_fn, compiled_opt)
    if args.also_bfloat16 and dtype != torch.bfloat16:  # the same steps under bfloat16 autocast, for the per-step ratio
        bf = build_model(mcfg)
        bf.load_state_dict(ours.state_dict())
        bf = bf.to(device)
        variants["arlm --dtype bfloat16"] = arlm_steps(bf, bf, make_optimizer(bf, tcfg, device), torch.bfloat16)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            if r:  # the first round warms up (and compiles)
                times[name].append((time.perf_counter() - t) / args.steps)
    report(args, times, ours, device, dtype)


def report(args, times: dict[str, list[float]], model, device: torch.device, dtype: torch.dtype) -> None:
    n = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    peak = matmul_peak(device, dtype)
    print(f"torch {torch.__version__}, {where}; {n / 1e6:.2f}M parameters "
          f"({args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide), context {args.block_size}, "
          f"batch {args.batch_size}, {args.dtype}; median of {args.rounds - 1} rounds x {args.steps} steps; "
          f"measured {args.dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    base = statistics.median(times["transformers GPT2LMHeadModel + AdamW"])
    tokens = args.batch_size * args.block_size
    flops = flops_per_token(model)
    for name, ts in times.items():
        t = statistics.median(ts)
        own = matmul_peak(device, torch.bfloat16) if name.endswith("bfloat16") else peak  # MFU against its own dtype's peak
        print(f"  {name:40s} {t * 1e3:7.1f} ms/step  {tokens / t:11,.0f} tokens/s  {base / t:5.2f}x  "
              f"MFU {tokens / t * flops / own:6.1%}")


if __name__ == "__main__":
    main()
