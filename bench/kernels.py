"""arlm's CPU training kernels (arlm/model/kernels) against PyTorch's operators on the same tensors.

    python bench/kernels.py [--rounds 5]

Per operator (forward and backward, float32 and bfloat16, at the activation shapes of nanoGPT's CPU
recipe and of the demo recipe), then a whole training step of the demo's shape (Muon, bfloat16
autocast, batch 32) with the kernels on and off. Variants alternate within each round; medians are
printed, with the ratio PyTorch time / arlm time (above 1: arlm is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from arlm.config import GPTConfig, TrainConfig
from arlm.model import build_model, kernels
from arlm.train.loop import optimizer_step
from arlm.train.optim import make_optimizer


def timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def alternate(variants: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant, the variants taking turns in every round."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn, repeats))
    return {name: statistics.median(t) for name, t in times.items()}


def operators(rounds: int) -> None:
    print("tanh GELU (GPT-2's gelu_new), microseconds per call; ratio = PyTorch / arlm")
    for label, shape in (("nanoGPT recipe (12x64, 512)", (768, 512)), ("demo (32x64, 512)", (2048, 512))):
        for dtype in (torch.float32, torch.bfloat16):
            x, g = torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)
            t = alternate({
                "torch fwd": lambda: F.gelu(x, approximate="tanh"),
                "arlm fwd": lambda: torch.ops.arlm.gelu_tanh(x),
                "torch bwd": lambda: torch.ops.aten.gelu_backward(g, x, approximate="tanh"),
                "arlm bwd": lambda: torch.ops.arlm.gelu_tanh_backward(g, x),
            }, rounds, 50)
            us = {k: v * 1e6 for k, v in t.items()}
            print(f"  {label:28s} {str(dtype).removeprefix('torch.'):9s} forward {us['torch fwd']:6.0f} vs "
                  f"{us['arlm fwd']:6.0f} ({us['torch fwd'] / us['arlm fwd']:.2f}x)   backward {us['torch bwd']:6.0f} vs "
                  f"{us['arlm bwd']:6.0f} ({us['torch bwd'] / us['arlm bwd']:.2f}x)")


def training_step(rounds: int) -> None:
    torch.manual_seed(0)
    model_cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
    cfg = TrainConfig(data="-", out="-", batch_size=32, model=model_cfg, optimizer="muon", dtype="bfloat16")
    model = build_model(model_cfg)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = torch.randint(0, 65, (32, 65))

    def step(use_kernels: bool):
        def run():
            kernels._loaded = use_kernels
            optimizer_step(model, model, opt, scaler, [(batch[:, :-1], batch[:, 1:])], 1e-3, cfg,
                           torch.device("cpu"), torch.bfloat16)
        return run

    try:
        t = alternate({"PyTorch's operators": step(False), "arlm's kernels": step(True)}, rounds, 10)
    finally:
        kernels._loaded = True
    base = t["PyTorch's operators"]
    print("\ndemo recipe's training step (4 layers, 128 wide, context 64, batch 32, Muon, bfloat16 autocast)")
    for name, sec in t.items():
        print(f"  {name:22s} {sec * 1e3:6.1f} ms/step   {base / sec:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not kernels.library():
        raise SystemExit("the CPU kernels could not be built here (no C++ compiler?): nothing to compare")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} alternating rounds")
    operators(args.rounds)
    training_step(args.rounds)


if __name__ == "__main__":
    main()
