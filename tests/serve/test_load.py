"""Load on `arlm serve` in its own process: 32 concurrent streaming requests, a third of them
disconnecting half-way, with malformed bodies among them; every other request gives exactly what the
Python API gives for its seed, the server stays up with no slot left in use, and its memory after
1,000 requests is within 10% of what it was after 100."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from tests.serve.conftest import serve_process

PROMPTS = ["To be, or not to be", "Whether 'tis nobler", "The slings and arrows", "Ay, there's the rub"]
TOKENS = 40


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def stream_one(client: httpx.AsyncClient, i: int, leave_after: int | None) -> str | None:
    body = {"model": "tiny-bpe", "prompt": PROMPTS[i % 4], "max_tokens": TOKENS, "min_tokens": TOKENS, "seed": i,
            "stream": True}
    text, chunks = "", 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return text
            chunk = json.loads(line[6:])
            text += chunk["choices"][0]["text"]
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                return None  # leaving the block closes the connection half-way
    raise AssertionError("the stream ended without [DONE]")


async def malformed(client: httpx.AsyncClient, k: int) -> int:
    bodies = [b"{", b'{"model": "tiny-bpe", "prompt": 5}', b'{"model": "tiny-bpe", "prompt": "x", "n": "two"}',
              b"\x00\xff", b'{"model": "tiny-bpe", "prompt": "x", "max_tokens": -5}']
    r = await client.post("/v1/completions", content=bodies[k % len(bodies)], headers={"content-type": "application/json"})
    return r.status_code


async def load_round(url: str) -> tuple[list, list]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        streams = [stream_one(client, i, TOKENS // 2 if i % 3 == 0 else None) for i in range(32)]
        bad = [malformed(client, k) for k in range(10)]
        results = await asyncio.gather(*streams, *bad)
    return results[:32], results[32:]


async def many(url: str, count: int, concurrency: int = 16) -> None:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(i):
            async with sem:
                body = {"model": "tiny-bpe", "prompt": PROMPTS[i % 4] + f" {i}", "max_tokens": 4, "seed": i,
                        "stream": i % 2 == 0}
                r = await client.post("/v1/completions", json=body)
                assert r.status_code == 200
        await asyncio.gather(*(one(i) for i in range(count)))


def test_concurrent_disconnecting_and_malformed_requests(bpe_model, bpe_lm):
    with serve_process("--model", str(bpe_model), "--max-batch", "16") as (url, proc):
        texts, codes = asyncio.run(load_round(url))
        assert codes == [400] * 10
        for i, text in enumerate(texts):
            if i % 3 == 0:
                assert text is None
                continue
            expected = bpe_lm.generate(PROMPTS[i % 4], max_new_tokens=TOKENS, min_new_tokens=TOKENS, seed=i)
            assert text == expected, i
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0
        metrics = httpx.get(url + "/metrics").text
        aborted = [ln for ln in metrics.splitlines() if ln.startswith("arlm_requests_aborted_total")]
        assert float(aborted[0].split()[-1]) >= 10  # the 11 that left

        asyncio.run(many(url, 100))
        after_100 = rss_kib(proc.pid)
        asyncio.run(many(url, 900))
        after_1000 = rss_kib(proc.pid)
        print(f"server RSS after 100 requests: {after_100} KiB, after 1000: {after_1000} KiB")
        assert after_1000 <= after_100 * 1.10, (after_100, after_1000)
        assert proc.poll() is None and httpx.get(url + "/health").json()["running"] == 0
