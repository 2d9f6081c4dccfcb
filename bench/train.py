"""Training speed: one arlm optimizer step vs transformers ``GPT2LMHeadModel`` + ``torch.optim.AdamW``.

    python bench/train.py [--n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12 --steps 20 --rounds 5]
    python bench/train.py --device cuda --dtype bfloat16 --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --batch-size 64

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
import statistics
import time

import torch

from arlm.config import GPTConfig, TrainConfig
from arlm.interop.hf import hf_config, hf_layout, hf_state_from_arlm
from arlm.model import build_model
from arlm.runtime import DTYPES, autocast
from arlm.train.loop import optimizer_step
from arlm.train.optim import make_optimizer
from arlm.train.throughput import flops_per_token, matmul_peak


def main() -> None:
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
    args = ap.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    mcfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                     n_embd=args.n_embd, dropout=0.0, bias=False, activation=args.activation)
    tcfg = TrainConfig(data="-", out="-", batch_size=args.batch_size, lr=1e-3, weight_decay=0.1, beta2=0.99,
                       grad_clip=1.0, model=mcfg)
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

    def arlm_steps(model, fn, opt):
        def run():
            model.train()
            for b in batches:
                if graphs and fn is compiled_fn:
                    torch.compiler.cudagraph_mark_step_begin()  # as the training loop does
                optimizer_step(fn, model, opt, scaler, [(b[:, :-1], b[:, 1:])], 1e-3, tcfg, device, dtype)
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
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            if r:  # the first round warms up (and compiles)
                times[name].append((time.perf_counter() - t) / args.steps)
    n = sum(p.numel() for p in ours.parameters())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    peak = matmul_peak(device, dtype)
    print(f"torch {torch.__version__}, {where}; {n / 1e6:.2f}M parameters "
          f"({args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide), context {args.block_size}, "
          f"batch {args.batch_size}, {args.dtype}; median of {args.rounds - 1} rounds x {args.steps} steps; "
          f"measured {args.dtype} matmul peak {peak / 1e12:.2f} TFLOP/s")
    base = statistics.median(times["transformers GPT2LMHeadModel + AdamW"])
    tokens = args.batch_size * args.block_size
    flops = flops_per_token(ours)
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:40s} {t * 1e3:7.1f} ms/step  {tokens / t:11,.0f} tokens/s  {base / t:5.2f}x  "
              f"MFU {tokens / t * flops / peak:6.1%}")


if __name__ == "__main__":
    main()
