"""The engine: continuous batching, slots, prefix caching, abort, and batch invariance (a seeded request
gives the same tokens alone or beside 15 others)."""

from __future__ import annotations

import pytest
import torch

from arlm.config import EngineConfig, GPTConfig, LSTMConfig, SamplingParams
from arlm.errors import UserError
from arlm.generate.engine import Engine
from arlm.model.gpt import GPT
from arlm.model.lstm import LSTMLM


def gpt(seed=0, block_size=64, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=64, block_size=block_size, n_layer=2, n_head=2, n_embd=64, dropout=0.0, **kw)).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: peaked distributions, so sampling is not uniform noise
        for p in m.parameters():
            p.mul_(4.0)
    return m


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (int(torch.randint(1, 20, (), generator=g)),), generator=g).tolist() for _ in range(n)]


def run(engine: Engine, requests: list[tuple[list[int], SamplingParams]]) -> list[list[int]]:
    ids = [engine.add(p, params) for p, params in requests]
    out = {i: [] for i in ids}
    for o in engine.run():
        if o.token is not None and not o.eos:
            out[o.request_id].append(o.token)
    return [out[i] for i in ids]


def mixed_params(i: int) -> SamplingParams:
    """A different request per row: sampling with various filters and penalties, and greedy."""
    kinds = [dict(temperature=0.9, top_k=20), dict(temperature=1.1, top_p=0.9), dict(temperature=0),
             dict(temperature=0.8, min_p=0.05, repetition_penalty=1.3), dict(typical_p=0.9, frequency_penalty=0.5)]
    return SamplingParams(max_new_tokens=24 + i % 7, seed=100 + i, **kinds[i % len(kinds)])


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_a_seeded_request_gives_the_same_tokens_alone_or_beside_15_others(precision):
    from arlm.compress.quantize import quantize

    m = quantize(gpt(), precision)
    reqs = [(p, mixed_params(i)) for i, p in enumerate(prompts(16))]
    alone = [run(Engine(m, config=EngineConfig(max_batch=1)), [r])[0] for r in reqs]
    together = run(Engine(m, config=EngineConfig(max_batch=16)), reqs)
    assert together == alone
    assert len({tuple(t) for t in alone}) == 16  # not degenerate


def test_requests_joining_a_running_batch_decode_as_alone():
    """Continuous batching: requests added between steps, finishing at different times, freeing slots
    that later requests take (max_batch 4 for 10 requests)."""
    m = gpt(seed=1)
    reqs = [(p, mixed_params(i)) for i, p in enumerate(prompts(10, seed=1))]
    alone = [run(Engine(m, config=EngineConfig(max_batch=1)), [r])[0] for r in reqs]
    e = Engine(m, config=EngineConfig(max_batch=4))
    ids, out, pending = [], {}, list(reqs)
    steps = 0
    while pending or e.has_unfinished():
        if pending and steps % 3 == 0:  # a new request every third step
            ids.append(e.add(*pending.pop(0)))
        for o in e.step():
            if o.token is not None and not o.eos:
                out.setdefault(o.request_id, []).append(o.token)
        assert e.stats()["running"] <= 4
        steps += 1
    assert [out[i] for i in ids] == alone


def test_a_finished_or_aborted_request_frees_its_slot_at_once():
    m = gpt()
    e = Engine(m, config=EngineConfig(max_batch=2))
    a = e.add([1, 2, 3], SamplingParams(max_new_tokens=1, temperature=0))
    b = e.add([4, 5], SamplingParams(max_new_tokens=50, temperature=0))
    c = e.add([6], SamplingParams(max_new_tokens=50, temperature=0))
    first = e.step()  # a and b admitted; a ends on its first token and c takes its slot in the same step
    assert {o.request_id for o in first} == {a, b, c} and [o.finish_reason for o in first][0] == "length"
    assert e.stats()["running"] == 2 and e.stats()["waiting"] == 0
    e.abort(b)
    assert e.stats()["running"] == 1 and b not in e.requests
    outs = e.run()
    assert {o.request_id for o in outs} == {c} and outs[-1].finish_reason == "length"


def test_prefix_caching_reuses_a_shared_prompt_start_and_changes_nothing():
    m = gpt(block_size=128)
    system = list(range(1, 50)) * 2  # 98 tokens: 6 whole chunks of 16
    reqs = [(system + tail, SamplingParams(max_new_tokens=12, seed=i, temperature=0.9)) for i, tail in
            enumerate([[3, 4], [5], [7, 8, 9]])]
    fresh = [run(Engine(m, config=EngineConfig(prefill_chunk=16, prefix_cache_mb=0)), [r])[0] for r in reqs]
    e = Engine(m, config=EngineConfig(prefill_chunk=16))
    shared = [run(e, [r])[0] for r in reqs]
    assert shared == fresh
    assert e.stats()["prefix_hits"] == 12  # the 2nd and 3rd prompts copy the system prompt's 6 chunks


def test_long_prompts_run_a_chunk_per_step_while_others_decode():
    """With max_prefill_tokens, a long prompt is run over several steps; the running sequences get a
    token in each of them, and every output equals the request run alone."""
    m = gpt(block_size=128)
    short = [([1, 2, 3], SamplingParams(max_new_tokens=30, seed=1)), ([4, 5], SamplingParams(max_new_tokens=30, seed=2))]
    long = (list(range(1, 61)) + [7] * 20, SamplingParams(max_new_tokens=10, seed=3))  # 80 tokens: 10 chunks of 8
    cfg = dict(prefill_chunk=8, max_prefill_tokens=8)
    alone = [run(Engine(m, config=EngineConfig(**cfg)), [r])[0] for r in short + [long]]
    e = Engine(m, config=EngineConfig(max_batch=3, **cfg))
    ids = [e.add(*r) for r in short]
    first = e.step()  # both short prompts are in (nothing was decoding: no limit)
    lid = e.add(*long)
    out, steps_before_first = {i: [] for i in ids + [lid]}, 0
    for o in first:
        out[o.request_id].append(o.token)
    while e.has_unfinished():
        got = e.step()
        if not out[lid]:
            steps_before_first += 1
            assert {o.request_id for o in got if o.token is not None} >= set(ids)  # the others kept decoding
        for o in got:
            if o.token is not None and not o.eos:
                out[o.request_id].append(o.token)
    assert steps_before_first == 10  # one 8-token chunk per step
    assert [out[i] for i in ids + [lid]] == alone


def test_windows_slide_per_row_and_batches_still_equal_one_by_one():
    m = gpt(block_size=24)
    reqs = [(p, SamplingParams(max_new_tokens=70, seed=i, temperature=0.8)) for i, p in enumerate(prompts(5, seed=3))]
    alone = [run(Engine(m, config=EngineConfig(max_batch=1)), [r])[0] for r in reqs]
    assert run(Engine(m, config=EngineConfig(max_batch=5)), reqs) == alone
    assert run(Engine(m, config=EngineConfig(max_batch=5, use_cache=False)), reqs) == alone


def test_lstm_runs_on_the_engine():
    torch.manual_seed(0)
    m = LSTMLM(LSTMConfig(vocab_size=40, block_size=32, n_layer=2, n_embd=32, dropout=0.0)).eval()
    reqs = [(p, SamplingParams(max_new_tokens=20, seed=i)) for i, p in enumerate([[1, 2, 3], [4], [5, 6, 7, 8, 9]])]
    alone = [run(Engine(m, config=EngineConfig(max_batch=1)), [r])[0] for r in reqs]
    assert run(Engine(m, config=EngineConfig(max_batch=3)), reqs) == alone


def test_n_sequences_share_one_prefill_and_differ():
    m = gpt()
    e = Engine(m, config=EngineConfig(max_batch=3))
    rid = e.add([1, 2, 3], SamplingParams(max_new_tokens=15, num_return_sequences=3, seed=5))
    rows = [[], [], []]
    for o in e.run():
        if o.token is not None and not o.eos:
            rows[o.index].append(o.token)
    assert len({tuple(r) for r in rows}) == 3
    # sequence i of a request with seed s is the request with seed s + i
    assert run(Engine(m), [([1, 2, 3], SamplingParams(max_new_tokens=15, seed=6))])[0] == rows[1]


@pytest.mark.parametrize("bad", [dict(prompt=[]), dict(prompt=[64]), dict(prompt=["a"]),
                                 dict(params=SamplingParams(logit_bias=["99=1"])),
                                 dict(params=SamplingParams(stop_token_ids=[70])),
                                 dict(params=SamplingParams(num_return_sequences=9)),
                                 dict(params=SamplingParams(temperature=-1.0)),
                                 dict(params=SamplingParams(stop=["x"]))])
def test_bad_requests_are_refused_before_they_wait(bad):
    e = Engine(gpt(), config=EngineConfig(max_batch=4))
    with pytest.raises(UserError):
        e.add(bad.get("prompt", [1, 2]), bad.get("params", SamplingParams()))
    assert not e.has_unfinished()


def test_a_failing_constraint_ends_only_its_request():
    """A request whose constraint fails while decoding (a grammar past llguidance's limits) ends with
    finish_reason "error" and the reason; the requests beside it decode as they would alone."""

    class Fails:
        def allowed(self, generated, vocab_size):
            if len(generated) >= 3:
                raise UserError("the output format could not be followed: too complex")
            return None

        def fresh(self):
            return self

    m = gpt()
    others = [([1, 2, 3], SamplingParams(max_new_tokens=12, seed=1)), ([4, 5], SamplingParams(max_new_tokens=12, seed=2))]
    alone = [run(Engine(m), [r])[0] for r in others]
    e = Engine(m, config=EngineConfig(max_batch=3))
    ids = [e.add(*r) for r in others]
    bad = e.add([6, 7], SamplingParams(max_new_tokens=12, seed=3), constraint=Fails())
    out = {i: [] for i in ids}
    ended = None
    for o in e.run():
        if o.request_id == bad:
            if o.finish_reason:
                ended = o
        elif o.token is not None and not o.eos:
            out[o.request_id].append(o.token)
    assert ended.finish_reason == "error" and "too complex" in ended.error
    assert [out[i] for i in ids] == alone
