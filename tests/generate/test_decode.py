"""Decoding through the engine and text streaming: cache == no cache, seeds, windows, UTF-8 safety, stop strings."""

from __future__ import annotations

import torch

from arlm.config import GenerateConfig, GPTConfig
from arlm.generate.engine import generate_ids
from arlm.generate.stream import TextStream
from arlm.model.gpt import GPT
from arlm.tokenizers import BPETokenizer


def model(block_size=32, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=61, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).eval()


def run(m, prompt, **kw) -> list[list[int]]:
    return generate_ids(m, prompt, GenerateConfig(**kw))


def test_cached_and_uncached_greedy_tokens_are_identical_beyond_the_window():
    m = model(block_size=32)
    prompt = [5, 17, 3, 42, 8, 8, 1]
    # 100 new tokens on a 32-token window: the window slides several times.
    cached = run(m, prompt, max_new_tokens=100, temperature=0, use_cache=True)
    uncached = run(m, prompt, max_new_tokens=100, temperature=0, use_cache=False)
    assert cached == uncached and len(cached[0]) == 100


def test_cached_and_uncached_sampling_are_identical_with_a_seed():
    m = model()
    kw = dict(max_new_tokens=60, temperature=0.9, top_k=20, top_p=0.95, seed=3, num_return_sequences=3)
    assert run(m, [1, 2, 3], use_cache=True, **kw) == run(m, [1, 2, 3], use_cache=False, **kw)


def test_seed_reproducible_and_sequences_differ():
    m = model()
    a = run(m, [7], max_new_tokens=30, seed=11, num_return_sequences=2)
    b = run(m, [7], max_new_tokens=30, seed=11, num_return_sequences=2)
    assert a == b and a[0] != a[1]
    assert run(m, [7], max_new_tokens=30, seed=12) != run(m, [7], max_new_tokens=30, seed=11)[:1]


def test_decode_step_costs_one_position():
    """With the cache, each new token runs the model on a (B, 1) input."""
    m = model()
    seen = []
    hook = m.transformer.wte.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    run(m, [1, 2, 3, 4, 5], max_new_tokens=6, temperature=0)
    hook.remove()
    assert seen == [5, 1, 1, 1, 1, 1]


def test_eos_stops_and_zero_tokens():
    m = model()
    first = run(m, [1, 2], max_new_tokens=1, temperature=0)[0][0]
    out = generate_ids(m, [1, 2], GenerateConfig(max_new_tokens=50, temperature=0), eos_ids=(first,))
    assert out == [[first]]
    assert run(m, [1, 2], max_new_tokens=0) == [[]]


def test_no_repeat_ngram_holds_in_output():
    m = model()
    seq = [1, 2, 3] + run(m, [1, 2, 3], max_new_tokens=80, temperature=0, no_repeat_ngram_size=2)[0]
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))



def stream_all(tok, ids, stop=()):
    s = TextStream(tok, stop)
    pieces = [s.push(i) for i in ids]
    pieces.append(s.finish())
    return pieces


def test_stream_never_splits_a_multibyte_character():
    text = "龍🐉 emoji 👨‍👩‍👧 and 汉字!"
    tok = BPETokenizer.train(["plain ascii only here"], vocab_size=260)  # Chinese/emoji fall back to bytes
    ids = tok.encode(text)
    assert len(ids) > len(text)  # many characters really are split over several tokens
    pieces = stream_all(tok, ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_cuts_at_stop_string_and_holds_back_prefixes():
    tok = BPETokenizer.train(["abc"], vocab_size=260)
    ids = tok.encode("Hello.\nEND of it")
    pieces = stream_all(tok, ids, stop=["\nEND"])
    assert "".join(pieces) == "Hello."
    s = TextStream(tok, ["\nEND"])
    shown = "".join(s.push(i) for i in tok.encode("one\nEN"))
    assert shown == "one"[: len(shown)] and "\n" not in shown  # "\nEN" might become "\nEND": held back
    assert s.finish() == "one\nEN"[len(shown):]


def test_batch_of_unequal_prompts_equals_one_by_one_greedy():
    """Each row decodes exactly as its prompt alone, for GPT-2 and Llama-style models, with and
    without the KV cache, with penalties, and past the context window (each row slides its own)."""
    prompts = [[5, 17, 3, 42, 8, 8, 1], [9], [1, 2, 3, 4]]
    llama = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, n_kv_head=1)
    for arch in ({}, llama):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=61, block_size=48, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **arch)).eval()
        for kw in (dict(use_cache=True), dict(use_cache=False), dict(repetition_penalty=1.5, no_repeat_ngram_size=2)):
            cfg = GenerateConfig(max_new_tokens=61, temperature=0, **kw)  # every row slides its window
            batch = generate_ids(m, prompts, cfg)
            alone = [generate_ids(m, p, cfg)[0] for p in prompts]
            assert batch == alone, (arch, kw)


def test_batch_rows_follow_prompts_times_sequences():
    m = model()
    cfg = GenerateConfig(max_new_tokens=5, temperature=0, num_return_sequences=2)
    out = generate_ids(m, [[1, 2, 3], [4]], cfg)
    assert len(out) == 4 and out[0] == out[1] and out[2] == out[3]
