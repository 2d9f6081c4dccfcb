"""Decode speed with and without the KV cache, same weights, same tokens, one process.

    python bench/kv_cache.py [--n-layer 6 --n-embd 384 --block-size 256 --new-tokens 200 --repeats 3]

Runs are alternated (cached, uncached, cached, ...) so drift in machine speed hits both alike; the
median tokens/s of each is printed with the ratio. Greedy decoding, so both produce identical tokens
(checked).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from arlm.config import GenerateConfig, GPTConfig
from arlm.generate.engine import generate_ids
from arlm.model.gpt import GPT


def timed(model: GPT, prompt: list[int], cfg: GenerateConfig) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    out = generate_ids(model, prompt, cfg)[0]
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=85)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=a.vocab_size, block_size=a.block_size, n_layer=a.n_layer, n_head=a.n_head,
                          n_embd=a.n_embd, dropout=0.0)).eval()
    prompt = torch.randint(0, a.vocab_size, (a.prompt_tokens,)).tolist()
    cached_cfg = GenerateConfig(max_new_tokens=a.new_tokens, temperature=0, use_cache=True)
    uncached_cfg = GenerateConfig(max_new_tokens=a.new_tokens, temperature=0, use_cache=False)
    timed(model, prompt, cached_cfg)  # warm-up
    times = {"cached": [], "uncached": []}
    for _ in range(a.repeats):
        t, out_c = timed(model, prompt, cached_cfg)
        times["cached"].append(t)
        t, out_u = timed(model, prompt, uncached_cfg)
        times["uncached"].append(t)
        assert out_c == out_u, "cached and uncached decoding disagree"
    rate = {k: a.new_tokens / statistics.median(v) for k, v in times.items()}
    print(f"model: {model.num_params() / 1e6:.2f}M params, n_layer={a.n_layer} n_embd={a.n_embd} "
          f"block_size={a.block_size}; prompt {a.prompt_tokens} tokens, {a.new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"{'KV cache':<12}{'tokens/s':>10}")
    for k in ("cached", "uncached"):
        print(f"{k:<12}{rate[k]:>10.1f}")
    print(f"ratio cached/uncached: {rate['cached'] / rate['uncached']:.2f}x (identical tokens)")


if __name__ == "__main__":
    main()
