"""Serving: `arlm serve` under streaming clients at several concurrencies, and prefix caching.

    python bench/serve.py [--concurrency 1,4,16,32 --requests 3 --new-tokens 64 --compile]

A random GPT-2-124M-shaped model (float32) over a 50,257-token byte-level BPE trained on the Python
standard library and the Shakespeare corpus is saved once under runs/bench-serve/ and served by
`arlm serve` in a subprocess, as a user runs it. At each concurrency C, C clients each send
1 + ``--requests`` streaming completions one after another (closed loop; a 32-token prompt, the length
forced with min_tokens so every request makes the same number of tokens; each client's first request,
all sent at the same instant, is not counted), the levels alternating over ``--rounds``, and the script
prints the aggregate generated tokens/s (median over rounds), time to first token (TTFT) p50/p95 and
inter-token latency (ITL, the gaps between streamed chunks) p50/p95, with each against concurrency 1. Then a 500-token shared
system prompt: TTFT of requests that share it (different questions after it) on a server with
prefix caching and on one without (``--prefix-cache-mb 0``), alternating request by request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "runs" / "bench-serve" / "gpt2-124m-random"


def build_model() -> Path:
    """The random GPT-2-shaped model and a 50,257-token BPE (cached on disk)."""
    if (MODEL / "config.json").is_file():
        return MODEL
    import torch

    from arlm.config import GPTConfig
    from arlm.interop.load import save_model
    from arlm.model.gpt import GPT
    from arlm.tokenizers import BPETokenizer

    lib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for f in sorted(lib.rglob("*.py")):
        with contextlib.suppress(UnicodeDecodeError, OSError):
            texts.append(f.read_text(encoding="utf-8"))
            size += len(texts[-1])
        if size > 30e6:
            break
    texts += [p.read_text(encoding="utf-8") for p in sorted((ROOT / "data" / "shakespeare").glob("*.txt"))]
    tok = BPETokenizer.train(texts, 50257)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0))
    save_model(MODEL, model.eval(), tok)
    return MODEL


@contextlib.contextmanager
def serve(*args: str):
    proc = subprocess.Popen([sys.executable, "-m", "arlm", "-q", "serve", "--model", str(MODEL), "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = re.search(r"(http://[^/\s]+)/", proc.stdout.readline()).group(1)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            assert proc.poll() is None, "the server exited"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def one(client: httpx.AsyncClient, prompt: str, tokens: int, seed: int) -> dict:
    body = {"model": MODEL.name, "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    arrivals, usage = [], None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
    return {"ttft": arrivals[0] - t0, "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "tokens": usage["completion_tokens"]}


async def level(url: str, concurrency: int, requests: int, tokens: int, prompts: list[str], offset: int) -> tuple:
    """C clients, each sending 1 + ``requests`` streaming requests one after another; each client's
    first request is not counted (every client starts at the same instant, a burst no steady load
    has). Returns (results of the counted requests, their generated tokens / the wall time in which
    they ran)."""
    results, starts, ends = [], [], []

    async def client_loop(c: int):
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            for r in range(requests + 1):
                t0 = time.perf_counter()
                res = await one(client, prompts[(offset + c * (requests + 1) + r) % len(prompts)], tokens, c * 1000 + r)
                if r:
                    results.append(res)
                    starts.append(t0)
                    ends.append(time.perf_counter())

    await asyncio.gather(*(client_loop(c) for c in range(concurrency)))
    return results, (sum(r["tokens"] for r in results) / (max(ends) - min(starts)) if results else 0.0)


def summarise(runs: list[tuple]) -> dict:
    results = [r for rs, _ in runs for r in rs]
    ttft = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]]
    return {"tokens_s": statistics.median(rate for _, rate in runs), "ttft50": pct(ttft, 50), "ttft95": pct(ttft, 95),
            "itl50": pct(gaps, 50), "itl95": pct(gaps, 95), "n": len(results)}


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def shakespeare_prompts(n: int, words: int) -> list[str]:
    text = (ROOT / "data" / "shakespeare" / "hamlet.txt").read_text(encoding="utf-8").split()
    return [" ".join(text[i * words:(i + 1) * words]) for i in range(n)]


def concurrency_table(a) -> None:
    prompts = shakespeare_prompts(400, 24)  # about 32 tokens each
    with serve("--max-batch", str(max(a.concurrency)), *(["--compile"] if a.compile else [])) as url:
        asyncio.run(level(url, max(a.concurrency), 0, 8, prompts, 0))  # warm-up at every batch size up to the largest
        runs: dict[int, list] = {c: [] for c in a.concurrency}
        for rnd in range(a.rounds):  # the levels alternate, so drift in machine speed hits all alike
            for c in a.concurrency:
                runs[c].append(asyncio.run(level(url, c, a.requests, a.new_tokens, prompts, rnd * 97 + c)))
    rows = {c: summarise(r) for c, r in runs.items()}
    base = rows[a.concurrency[0]]
    print(f"\nstreaming completions: ~32-token prompts, {a.new_tokens} new tokens each; each client sends "
          f"1 + {a.requests} requests in turn (the first not counted), {a.rounds} rounds alternating the levels")
    print(f"{'clients':>8}{'tokens/s':>10}{'x1':>7}{'TTFT p50':>10}{'p95':>8}{'x1':>7}{'ITL p50':>9}{'p95':>8}{'requests':>10}")
    for c, r in rows.items():
        print(f"{c:>8}{r['tokens_s']:>10.1f}{r['tokens_s'] / base['tokens_s']:>6.2f}x"
              f"{r['ttft50'] * 1e3:>8.0f}ms{r['ttft95'] * 1e3:>6.0f}ms{r['ttft95'] / base['ttft95']:>6.2f}x"
              f"{r['itl50'] * 1e3:>7.0f}ms{r['itl95'] * 1e3:>6.0f}ms{r['n']:>10}")


def prefix_table(a) -> None:
    system = " ".join((ROOT / "data" / "shakespeare" / "hamlet.txt").read_text(encoding="utf-8").split()[:320])
    questions = shakespeare_prompts(40, 6)
    with serve() as cached, serve("--prefix-cache-mb", "0") as plain:
        ntok = len(httpx.post(cached + "/tokenize", json={"prompt": system}).json()["tokens"])
        times = {"prefix caching": [], "no prefix caching": []}

        async def run():
            async with httpx.AsyncClient(base_url=cached, timeout=600) as c1, \
                    httpx.AsyncClient(base_url=plain, timeout=600) as c2:
                await one(c1, system + "\n" + questions[-1], 1, 0)  # the first request fills the cache
                await one(c2, system + "\n" + questions[-1], 1, 0)
                for i, q in enumerate(questions[:a.prefix_requests]):
                    for name, client in (("prefix caching", c1), ("no prefix caching", c2)):
                        times[name].append((await one(client, system + "\n" + q, 4, i))["ttft"])

        asyncio.run(run())
    on, off = statistics.median(times["prefix caching"]), statistics.median(times["no prefix caching"])
    print(f"\nshared {ntok}-token system prompt, {a.prefix_requests} requests with different questions after it "
          f"(median TTFT, one client)")
    print(f"  without prefix caching {off * 1e3:8.0f} ms\n  with prefix caching    {on * 1e3:8.0f} ms   "
          f"ratio {on / off:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,32")
    p.add_argument("--requests", type=int, default=3, help="counted requests per client at each concurrency and round")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the concurrency levels")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prefix-requests", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="serve with --compile")
    p.add_argument("--skip", default="", help="comma-separated: concurrency,prefix")
    a = p.parse_args()
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    import torch

    build_model()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; `arlm serve` of a random GPT-2-124M-shaped model "
          f"(float32){' compiled' if a.compile else ''}")
    if "concurrency" not in a.skip:
        concurrency_table(a)
    if "prefix" not in a.skip:
        prefix_table(a)


if __name__ == "__main__":
    main()
