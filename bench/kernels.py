"""arlm's CPU training kernels (arlm/model/kernels) against PyTorch's operators on the same tensors.

    python bench/kernels.py [--rounds 5]

Per operator (the tanh GELU and causal attention, forward and backward, float32 and bfloat16, at the
shapes of nanoGPT's CPU recipe, of the demo recipe and of longer contexts), then whole training steps
of nanoGPT's recipe (float32, AdamW, batch 12, exact GELU) and of the demo's (Muon, bfloat16 autocast,
batch 32, tanh GELU) with the kernels on and off. Variants alternate within each round; medians are
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


def attention(rounds: int) -> None:
    print("\ncausal attention, forward + backward, microseconds per call (PyTorch: its CPU flash attention in float32,"
          " as arlm ran it before; bfloat16 inputs converted); ratio = PyTorch / arlm")
    for B, nh, T, hs in ((12, 4, 64, 32), (32, 4, 64, 32), (8, 12, 128, 64), (4, 6, 256, 64)):
        for dtype in (torch.float32, torch.bfloat16):
            qkv = torch.randn(B, T, 3 * nh * hs, dtype=dtype)
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2).detach().requires_grad_() for t in qkv.split(nh * hs, dim=2))
            g = torch.randn(B, nh, T, hs, dtype=dtype)

            def pytorch():
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(dtype)
                y.backward(g)

            def arlm():
                kernels.causal_attention(q, k, v).backward(g)

            t = alternate({"torch": pytorch, "arlm": arlm}, rounds, 20)
            print(f"  (B={B}, nh={nh}, T={T}, hs={hs})".ljust(30) + f"{str(dtype).removeprefix('torch.'):9s} "
                  f"{t['torch'] * 1e6:7.0f} vs {t['arlm'] * 1e6:7.0f} ({t['torch'] / t['arlm']:.2f}x)")


RECIPES = {  # name: (batch, optimizer, dtype, activation)
    "nanoGPT's CPU recipe (batch 12, AdamW, float32, exact GELU)": (12, "adamw", "float32", "gelu"),
    "the demo's recipe (batch 32, Muon, bfloat16 autocast, tanh GELU)": (32, "muon", "bfloat16", "gelu_tanh"),
}


def training_step(rounds: int) -> None:
    for name, (batch_size, optimizer, dtype, activation) in RECIPES.items():
        torch.manual_seed(0)
        model_cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
                              activation=activation)
        cfg = TrainConfig(data="-", out="-", batch_size=batch_size, model=model_cfg, optimizer=optimizer, dtype=dtype)
        model = build_model(model_cfg)
        opt = make_optimizer(model, cfg, torch.device("cpu"))
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        batch = torch.randint(0, 65, (batch_size, 65))

        def step(use_kernels: bool):
            def run():
                kernels._loaded = use_kernels
                optimizer_step(model, model, opt, scaler, [(batch[:, :-1], batch[:, 1:])], 1e-3, cfg,
                               torch.device("cpu"), getattr(torch, dtype))
            return run

        try:
            t = alternate({"PyTorch's operators": step(False), "arlm's kernels": step(True)}, rounds, 10)
        finally:
            kernels._loaded = True
        base = t["PyTorch's operators"]
        print(f"\ntraining step, 4 layers x 128, context 64: {name}")
        for variant, sec in t.items():
            print(f"  {variant:22s} {sec * 1e3:6.1f} ms/step   {base / sec:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not kernels.library():
        raise SystemExit("the CPU kernels could not be built here (no C++ compiler?): nothing to compare")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.rounds} alternating rounds")
    operators(args.rounds)
    attention(args.rounds)
    training_step(args.rounds)


if __name__ == "__main__":
    main()
