"""arlm against llama.cpp on the same weights: GPT-2-124M-shaped random weights exported to GGUF
(F32, Q8_0, Q4_0) and decoded by llama.cpp (the llama-cpp-python binding, `pip install -e ".[llama]"`),
beside arlm's float32, int8 and int4 (groups of 32, symmetric: Q4_0's layout and rule) made from the
same float weights. Batch 1, greedy, the same token-id prompt, 2 threads for both; every run decodes
exactly --new-tokens tokens after a --prompt-tokens prompt (prefill included in the time, as a user
waits for it); variants alternated, medians of --repeats.

    python bench/llamacpp.py [--new-tokens 64 --prompt-tokens 16 --repeats 5 --threads 2 --compile]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from arlm.compress.quantize import quant_spec, quantize_model
from arlm.config import GPTConfig
from arlm.interop.gguf import export_gguf
from arlm.model.gpt import GPT
from arlm.tokenizers.char import CharTokenizer
from decode import alternate  # bench/decode.py (run as `python bench/llamacpp.py`)
from quantize import run  # bench/quantize.py: greedy decoding of exactly `new` tokens, timed


def llama_cpp_runner(path: Path, prompt: list[int], new: int, threads: int):
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(prompt) + new + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=64, verbose=False)

    def run():
        llm.reset()
        out = []
        t = time.perf_counter()
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == new:
                break
        return time.perf_counter() - t, out

    return run


def arlm_runner(model, prompt: list[int], new: int, compile: bool):
    return lambda: (lambda t, out: (t, out[0]))(*run(model, [prompt], new, compile))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also arlm's compiled decode step")
    a = p.parse_args()
    import llama_cpp

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    base = GPT(cfg).eval()
    tok = CharTokenizer([chr(c) for c in range(32, 127)])  # the ids matter, not the text: llama.cpp gets ids
    prompt = torch.randint(0, 95, (a.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    models = {"float32": base, "int8": quantize_model(copy.deepcopy(base), quant_spec("int8", 0, False)),
              "int4": quantize_model(copy.deepcopy(base), quant_spec("int4", 32, False))}
    for name in ("int8", "int4"):
        models[name].cache_dtype = torch.bfloat16  # as arlm.load does for quantized models on CPU
    variants = {}
    with tempfile.TemporaryDirectory() as d:
        for ours, theirs in (("float32", "f32"), ("int8", "q8_0"), ("int4", "q4_0")):
            path = Path(d) / f"m-{theirs}.gguf"
            export_gguf(base, tok, path, theirs)
            variants[f"llama.cpp {theirs.upper()}"] = llama_cpp_runner(path, prompt, a.new_tokens, a.threads)
            variants[f"arlm {ours}"] = arlm_runner(models[ours], prompt, a.new_tokens, False)
            if a.compile:
                variants[f"arlm {ours} --compile"] = arlm_runner(models[ours], prompt, a.new_tokens, True)
        med, outs = alternate(variants, a.repeats)
    print(f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, {a.threads} threads; GPT-2 124M shape, "
          f"random weights; batch 1, {a.prompt_tokens}-token prompt + {a.new_tokens} new tokens, greedy; median of "
          f"{a.repeats}, alternated")
    print(f"{'':28}{'tokens/s':>10}{'vs llama.cpp':>14}{'same tokens as llama.cpp':>26}")
    for ours, theirs in (("float32", "F32"), ("int8", "Q8_0"), ("int4", "Q4_0")):
        ref = f"llama.cpp {theirs}"
        for k in (ref, f"arlm {ours}", f"arlm {ours} --compile"):
            if k not in med:
                continue
            same = sum(x == y for x, y in zip(outs[k], outs[ref]))
            print(f"{k:28}{a.new_tokens / med[k]:10.1f}{med[ref] / med[k]:13.2f}x{same:>20}/{a.new_tokens}")


if __name__ == "__main__":
    main()
