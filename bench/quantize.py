"""Weight-only quantization: decoding speed on the GPT-2-124M shape and perplexity on a trained model.

    python bench/quantize.py [--new-tokens 64 --repeats 5]                   # speed, random 124M weights
    python bench/quantize.py --model runs/char10m --data runs/data/shakespeare-char --skip speed  # perplexity

Speed: one process, the variants alternated (so drift in the machine's speed hits all alike), medians
of ``--repeats``; greedy decoding with the length forced. Variants:

* float32, and arlm's int8 (arlm::linear) and int4 (arlm::linear_int4) layers, as ``arlm compress
  quantize`` writes them (every linear layer and the tied embedding/output matrix);
* the same int4 codes through PyTorch's packed int4 operators (``_convert_weight_to_int4pack_for_cpu`` /
  ``_weight_int4pack_mm_for_cpu``, the CPU path of torchao's int4 weight-only), with bfloat16
  activations, which that operator runs an order of magnitude faster than float32 here;
* PyTorch's dynamic int8 (``torch.ao.quantization.quantize_dynamic``), the tutorials' method.

Perplexity: every method and group size on ``--data``'s validation split (or a text file), against float32.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
from torch import nn

from arlm.compress.int4 import Int4Linear
from arlm.compress.quantize import describe, quant_spec, quantize_model
from arlm.compress.report import validation_ids, validation_loss
from arlm.train.compress import dynamic_int8
from arlm.config import GenerateConfig, GPTConfig
from arlm.generate.engine import generate_ids
from arlm.model.gpt import GPT
from decode import alternate  # bench/decode.py: variants alternated, medians (run as `python bench/quantize.py`)

ROOT = Path(__file__).resolve().parents[1]


class TorchInt4Linear(nn.Module):
    """An Int4Linear's codes through PyTorch's packed int4 CPU operators: tinygemm's form
    w = (q - 8) * scale + zero, so zero = offset + 8 * scale (0 for symmetric codes)."""

    def __init__(self, layer: Int4Linear):
        super().__init__()
        from arlm.compress.int4 import unpack

        q = unpack(layer.codes).to(torch.int32)  # (N, K) codes 0..15
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        s = layer.scales.float()
        zero = torch.zeros_like(s) if layer.offsets is None else layer.offsets.float() + 8 * s
        self.register_buffer("scales_zeros", torch.stack([s, zero], dim=-1).transpose(0, 1).contiguous().bfloat16())  # (K/G, N, 2)
        self.group_size, self.bias, self.out_features = layer.group_size, layer.bias, layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.size(-1)).bfloat16()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, self.group_size, self.scales_zeros).float()
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def torch_int4(model: nn.Module) -> nn.Module:
    """A copy of an int4 model whose linear layers run PyTorch's packed operators (the embedding as it is)."""
    m = copy.deepcopy(model)
    for module in list(m.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Int4Linear):
                setattr(module, name, TorchInt4Linear(child))
    if hasattr(m.transformer.wte, "_shared"):  # the tied embedding reads the original int4 matrix
        m.transformer.wte._shared = [model.lm_head]
    return m


def weight_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and t.device.type != "meta":
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def run(model: nn.Module, prompts: list[list[int]], new: int, compile: bool = False) -> tuple[float, list[list[int]]]:
    cfg = GenerateConfig(max_new_tokens=new, min_new_tokens=new, temperature=0, compile=compile)
    t = time.perf_counter()
    tokens = generate_ids(model, prompts, cfg)
    return time.perf_counter() - t, tokens


def speed(a) -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    base = GPT(cfg).eval()
    models = {"float32": base}
    models["int8 (arlm)"] = quantize_model(copy.deepcopy(base), quant_spec("int8", 0, False))
    models["int4 g32 sym (arlm)"] = quantize_model(copy.deepcopy(base), quant_spec("int4", 32, False))
    models["int4 g128 asym (arlm)"] = quantize_model(copy.deepcopy(base), quant_spec("int4", 128, True))
    models["int4 g32 sym (torch packed)"] = torch_int4(models["int4 g32 sym (arlm)"])
    models["dynamic int8 (torch.ao)"] = dynamic_int8(base)
    for name, m in models.items():
        if "arlm" in name:
            m.cache_dtype = torch.bfloat16  # as arlm.load does for quantized models on CPU
    gen = torch.Generator().manual_seed(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; GPT-2 124M shape (vocab 50304), random "
          f"weights, greedy, {a.prompt_tokens}-token prompts; median of {a.repeats}, variants alternated")
    for rows, new in ((1, a.new_tokens), (8, a.batch_new_tokens)):
        prompts = torch.randint(0, cfg.vocab_size, (rows, a.prompt_tokens), generator=gen).tolist()
        variants = {k: (lambda m=m: run(m, prompts, new)) for k, m in models.items()}
        if not a.no_compile:
            for k in ("float32", "int8 (arlm)", "int4 g32 sym (arlm)"):
                variants[k + " --compile"] = lambda m=models[k]: run(m, prompts, new, compile=True)
        med, outs = alternate(variants, a.repeats)
        print(f"\nbatch {rows}, {new} new tokens each (ratios: eager against eager, compiled against compiled)")
        print(f"{'':40}{'weights MB':>11}{'tokens/s':>10}{'vs float32':>12}{'vs arlm int8':>14}")
        for k, t in med.items():
            tag = " --compile" if k.endswith("--compile") else ""
            name = k.removesuffix(" --compile")
            print(f"{k:40}{weight_bytes(models[name]) / 1e6:11.0f}{rows * new / t:10.1f}{med['float32' + tag] / t:11.2f}x"
                  f"{med['int8 (arlm)' + tag] / t:13.2f}x")


def perplexity(a) -> None:
    import arlm

    lm = arlm.load(a.model, device="cpu")
    ids = validation_ids(a.data, lm.tokenizer, a.eval_tokens)
    base = lm.model
    loss0 = validation_loss(base, ids)
    n = sum(p.numel() for p in base.parameters())
    print(f"\n{a.model}: {n / 1e6:.1f}M parameters; {len(ids):,} validation tokens of {a.data}")
    print(f"{'':44}{'loss':>8}{'perplexity':>12}{'vs float32':>12}")
    print(f"{'float32':44}{loss0:8.4f}{math.exp(loss0):12.3f}")
    forms = [("int8", 0, False)] + [("int4", g, asym) for g in (32, 64, 128) for asym in (False, True)]
    for method, group, asym in forms:
        if method == "int4" and base.config.n_embd % group:
            continue
        spec = quant_spec(method, group, asym)
        loss = validation_loss(quantize_model(copy.deepcopy(base), spec), ids)
        print(f"{describe(spec):44}{loss:8.4f}{math.exp(loss):12.3f}{math.exp(loss - loss0) - 1:+11.2%}")
    loss = validation_loss(dynamic_int8(base), ids)
    print(f"{'dynamic int8 (torch.ao)':44}{loss:8.4f}{math.exp(loss):12.3f}{math.exp(loss - loss0) - 1:+11.2%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="", help="trained model for the perplexity table (skipped without)")
    p.add_argument("--data", default="", help="its prepared data folder (validation split) or a text file")
    p.add_argument("--eval-tokens", type=int, default=0, help="validation tokens scored (0: all)")
    p.add_argument("--skip", default="", help="comma-separated: speed, perplexity")
    p.add_argument("--no-compile", action="store_true", help="eager decoding only (compiling takes ~1 minute a model)")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if "speed" not in skip:
        speed(a)
    if "perplexity" not in skip and a.model:
        perplexity(a)


if __name__ == "__main__":
    main()
