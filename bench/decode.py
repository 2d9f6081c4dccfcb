"""Decoding speed: arlm vs transformers ``generate`` on the same random GPT-2-124M-shaped weights.

    python bench/decode.py [--new-tokens 256 --batch-new-tokens 64 --repeats 3 --agreement-model runs/shakespeare-char]
    python bench/decode.py --device cuda [--dtype bfloat16]     # on a GPU: both libraries on the GPU

One process, runs alternated (transformers, arlm, arlm compiled, ...) so drift in machine speed hits
all alike; medians are printed. Greedy decoding with the length forced (min_new_tokens), so every run
makes the same number of tokens; the tokens of arlm and transformers are compared. Also printed:

* the memory-bandwidth bound: bytes of weights read per decoded token / measured bandwidth (a large
  tensor sum), and each variant's fraction of it;
* prefill of a 1024-token prompt (next-token logits only, as ``generate`` does);
* bfloat16 and weight-only int8 decoding (eager and compiled) against our float32, and the int8 model's
  next-token agreement with float32 on real text (Shakespeare) for a trained model, when one is given.

Compiling takes about a minute per precision on a 2-core CPU (and the CPU kernels, arlm/model/kernels, are
built once, about 15 s, if not yet cached); the first call of each variant is excluded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from arlm.compress.quantize import quantize
from arlm.config import GenerateConfig, GPTConfig
from arlm.generate.engine import generate_ids
from arlm.generate.step import prefill
from arlm.interop.hf import hf_state_from_arlm
from arlm.model.gpt import GPT
from arlm.compress.int8 import QuantizedLinear

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a host clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bandwidth_gbs(device: torch.device) -> float:
    """Read bandwidth in GB/s: median time to sum a 512 MB tensor (far larger than any cache). On the
    project's 2-core VM it drifts by about ±15% between and within runs (arlm's matrix-vector kernel
    reading 512 MB measures about the same), so the bound is approximate: compiled float32 decoding
    has measured 93-118% of it."""
    x = torch.ones(128 * 1024 * 1024, device=device)
    x.sum()
    times = []
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        x.sum()
        sync(device)
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times) / 1e9


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes read per decoded token: every linear layer's weight (packed or float), scales and bias
    (the output layer too, though tied to the embedding); embeddings read one row and are left out."""
    total = 0
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, QuantizedLinear)):
            total += sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))
    return total


def arlm_run(model: GPT, prompts: list[list[int]], new: int, compile: bool) -> tuple[float, list[list[int]]]:
    cfg = GenerateConfig(max_new_tokens=new, temperature=0, compile=compile)
    t = time.perf_counter()
    tokens = generate_ids(model, prompts, cfg)  # token lists: on a GPU, waits for the last step
    return time.perf_counter() - t, tokens


def hf_run(hf, prompts: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    x = torch.tensor(prompts, device=hf.device)
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)
    tokens = out[:, x.size(1):].tolist()
    return time.perf_counter() - t, tokens


def alternate(variants: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per variant and each one's last output, alternating; the first call of each
    (warm-up, compilation) is dropped."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    for _ in range(repeats):
        for k, fn in variants.items():
            t, outputs[k] = fn()
            times[k].append(t)
    return {k: statistics.median(v) for k, v in times.items()}, outputs


def agreement(path: str, tokens: int = 4000) -> tuple[float, int]:
    """Fraction of positions where the int8 model's next token equals float32's, on real text."""
    import arlm

    text = (ROOT / "data" / "shakespeare" / "hamlet.txt").read_text(encoding="utf-8")[20_000:]
    ref = arlm.load(path, device="cpu")
    q = arlm.load(path, device="cpu", precision="int8")
    ids = ref.tokenizer.encode(text)[:tokens]
    T = ref.block_size
    same = total = 0
    with torch.inference_mode():
        for i in range(0, len(ids) - 1, T):
            x = torch.tensor([ids[i:i + T]])
            a = ref.model(x)[0].argmax(-1)
            b = q.model(x)[0].argmax(-1)
            same += int((a == b).sum())
            total += a.numel()
    return same / total, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batch-new-tokens", type=int, default=64)
    p.add_argument("--prefill-tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--agreement-model", default=str(ROOT / "runs" / "shakespeare-char"),
                   help="trained arlm model for the int8 agreement check (skipped if missing)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: batch1,batch,prefill,precision,agreement")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where both libraries run")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="weights and activations of both models in the comparisons against transformers")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)

    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    ours = GPT(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)).eval()
    hf.load_state_dict(hf_state_from_arlm(ours, "gpt2"), strict=False)  # lm_head is tied to wte
    float32 = ours.state_dict()  # the precision section starts from these weights
    ours, hf = ours.to(device, dtype), hf.to(device, dtype)
    bw = bandwidth_gbs(device)
    wbytes = weight_bytes(ours)
    bound = bw * 1e9 / wbytes
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}; "
          f"GPT-2 124M shape, random weights, {a.dtype}, greedy; median of {a.repeats}")
    print(f"measured read bandwidth {bw:.1f} GB/s (tensor sum); weights read per token {wbytes / 1e6:.0f} MB ({a.dtype}) "
          f"-> bound {bound:.1f} tokens/s at batch 1")
    gen = torch.Generator().manual_seed(1)

    def prompts(n):
        return torch.randint(0, 50257, (n, a.prompt_tokens), generator=gen).tolist()

    if "batch1" not in skip:
        pr = prompts(1)
        med, outs = alternate({
            "transformers": lambda: hf_run(hf, pr, a.new_tokens),
            "arlm": lambda: arlm_run(ours, pr, a.new_tokens, False),
            "arlm --compile": lambda: arlm_run(ours, pr, a.new_tokens, True),
        }, a.repeats)
        print(f"\nbatch 1, {a.prompt_tokens}-token prompt, {a.new_tokens} new tokens "
              f"(tokens identical to transformers: {outs['arlm'] == outs['transformers'] == outs['arlm --compile']})")
        print(f"{'':16}{'tokens/s':>10}{'vs transformers':>17}{'of bound':>10}")
        for k, t in med.items():
            rate = a.new_tokens / t
            print(f"{k:16}{rate:10.1f}{med['transformers'] / t:16.2f}x{rate / bound:10.0%}")

    if "batch" not in skip:
        pr = prompts(a.batch)
        med, outs = alternate({
            "transformers": lambda: hf_run(hf, pr, a.batch_new_tokens),
            "arlm": lambda: arlm_run(ours, pr, a.batch_new_tokens, False),
            "arlm --compile": lambda: arlm_run(ours, pr, a.batch_new_tokens, True),
        }, a.repeats)
        print(f"\nbatch {a.batch}, {a.prompt_tokens}-token prompts, {a.batch_new_tokens} new tokens each "
              f"(tokens identical: {outs['arlm'] == outs['transformers'] == outs['arlm --compile']})")
        print(f"{'':16}{'tokens/s':>10}{'vs transformers':>17}")
        for k, t in med.items():
            print(f"{k:16}{a.batch * a.batch_new_tokens / t:10.1f}{med['transformers'] / t:16.2f}x")

    if "prefill" not in skip:
        x = torch.randint(0, 50257, (1, a.prefill_tokens), generator=gen).to(device)

        def hf_prefill():
            t = time.perf_counter()
            with torch.inference_mode():
                out = hf(x, use_cache=True, logits_to_keep=1).logits[:, -1]
            sync(device)
            return time.perf_counter() - t, out.float()

        def arlm_prefill():
            t = time.perf_counter()
            with torch.inference_mode():
                out = prefill(ours, ours.new_cache(1, a.prefill_tokens), x[0].tolist())
            sync(device)
            return time.perf_counter() - t, out.float()

        med, outs = alternate({"transformers": hf_prefill, "arlm": arlm_prefill}, a.repeats)
        diff = float((outs["transformers"] - outs["arlm"]).abs().max())
        print(f"\nprefill of {a.prefill_tokens} tokens (max |logit difference| {diff:.1e})")
        for k, t in med.items():
            print(f"{k:16}{a.prefill_tokens / t:10.1f} tokens/s{med['transformers'] / t:8.2f}x")

    if "precision" not in skip:
        pr = prompts(1)
        models = {}
        for fmt in ("float32", "bfloat16", "int8"):
            m = GPT(cfg).eval()
            m.load_state_dict(float32)
            models[fmt] = quantize(m.to(device), fmt)
        variants = {}
        for k, m in models.items():
            variants[k] = lambda m=m: arlm_run(m, pr, a.new_tokens, False)
            variants[k + " --compile"] = lambda m=m: arlm_run(m, pr, a.new_tokens, True)
        med, outs = alternate(variants, a.repeats)
        print(f"\nprecision, batch 1, {a.new_tokens} new tokens (ratios against float32 run the same way)")
        print(f"{'':22}{'tokens/s':>10}{'vs float32':>12}{'of its bound':>14}{'same tokens as float32':>24}")
        for k, t in med.items():
            fmt, compiled = k.split()[0], k.endswith("--compile")
            ref = "float32 --compile" if compiled else "float32"
            rate = a.new_tokens / t
            own_bound = bw * 1e9 / weight_bytes(models[fmt])  # bfloat16 on a GPU: the whole model
            same = sum(x == y for x, y in zip(outs[k][0], outs[ref][0]))
            print(f"{k:22}{rate:10.1f}{med[ref] / t:11.2f}x{rate / own_bound:14.0%}{same:>17}/{a.new_tokens}")
    if "agreement" not in skip:
        if Path(a.agreement_model).exists():
            frac, n = agreement(a.agreement_model)
            print(f"\nint8 vs float32 next-token agreement on Hamlet ({a.agreement_model}, {n} positions): {frac:.2%}")
        else:
            print(f"\n(no trained model at {a.agreement_model}: run `make demo` for the int8 agreement check)")


if __name__ == "__main__":
    main()
