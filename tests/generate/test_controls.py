"""Decoding controls beyond sampling filters: OpenAI penalties, bad words, logit bias, min_new_tokens,
max_time, log-probabilities and prompt echo, speculative decoding, and decode precisions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from arlm.config import EngineConfig, GenerateConfig, GPTConfig
from arlm.generate.engine import Engine
from arlm.generate.sampling import frequency_presence_penalty, process_logits
from arlm.generate.speculative import SpeculativeStats, accept_or_resample, speculative_ids
from arlm.generate.step import prompt_logprobs
from arlm.model.gpt import GPT


def model(seed=0, vocab=61, n_layer=2, n_embd=32, block_size=64) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd,
                         dropout=0.0)).eval()


def outputs(m, prompts, eos=(), bad_words_ids=(), compile=False, **kw) -> list[list]:
    """Each row's engine outputs (a row per prompt and sequence)."""
    prompts = prompts if isinstance(prompts[0], list) else [prompts]
    cfg = GenerateConfig(**kw)
    e = Engine(m, None, eos, EngineConfig(max_batch=len(prompts) * cfg.num_return_sequences, compile=compile))
    ids = [e.add(p, cfg.sampling_params(), bad_words_ids=bad_words_ids) for p in prompts]
    rows = [[] for _ in range(len(prompts) * cfg.num_return_sequences)]
    for o in e.run():
        if o.token is not None:
            rows[ids.index(o.request_id) * cfg.num_return_sequences + o.index].append(o)
    return rows


def tokens(m, prompt, bad_words_ids=(), eos=(), **kw) -> list[int]:
    return [o.token for o in outputs(m, prompt, eos, bad_words_ids, **kw)[0]]


PROMPT = [5, 17, 3, 42, 8]


def test_frequency_and_presence_penalties_count_generated_tokens():
    logits = torch.zeros(2, 6)
    generated = torch.tensor([[1, 1, 1, 4], [2, 2, 5, 5]])
    counts = torch.zeros(2, 6).scatter_add_(1, generated, torch.ones(2, 4))
    out = frequency_presence_penalty(logits, counts, frequency=0.5, presence=0.25)
    want = torch.zeros(2, 6)
    want[0, 1], want[0, 4] = -(0.5 * 3 + 0.25), -(0.5 + 0.25)
    want[1, 2], want[1, 5] = -(0.5 * 2 + 0.25), -(0.5 * 2 + 0.25)
    assert torch.equal(out, want)
    # the prompt does not count: only the generated columns are passed
    counts = torch.zeros(2, 6).scatter_add_(1, generated, torch.ones(2, 4))
    assert torch.equal(frequency_presence_penalty(logits, counts, [0.5, 0.5], [0.25, 0.25]), want)
    cfg = GenerateConfig(frequency_penalty=2.0, temperature=0)
    ctx = torch.tensor([[3, 3, 3, 1]])
    got = process_logits(torch.zeros(1, 6), ctx, cfg, generated=ctx[:, 3:])
    assert got[0, 3] == 0 and got[0, 1] == -2.0


def test_frequency_penalty_reduces_repetition_in_output():
    m = model()
    plain = tokens(m, PROMPT, max_new_tokens=40, temperature=0)
    penal = tokens(m, PROMPT, max_new_tokens=40, temperature=0, frequency_penalty=1.0, presence_penalty=1.0)
    assert len(set(penal)) > len(set(plain))


def test_bad_words_never_appear():
    m = model()
    plain = tokens(m, PROMPT, max_new_tokens=30, temperature=0)
    single = plain[0]
    pair = plain[3:5]
    out = tokens(m, PROMPT, [[single], pair], max_new_tokens=30, temperature=0)
    assert single not in out
    seq = PROMPT + out
    assert all(seq[i:i + 2] != pair for i in range(len(PROMPT) - 1, len(seq) - 1))
    assert out != plain


def test_logit_bias_forces_and_bans():
    m = model()
    forced = tokens(m, PROMPT, logit_bias=['7=100'], max_new_tokens=10, temperature=0.8, seed=0)
    assert forced == [7] * 10
    plain = tokens(m, PROMPT, max_new_tokens=10, temperature=0)
    banned = tokens(m, PROMPT, logit_bias=[f'{plain[0]}=-100'], max_new_tokens=10, temperature=0)
    assert plain[0] not in banned


def test_min_new_tokens_holds_back_every_eos():
    m = model()
    first, second = tokens(m, PROMPT, max_new_tokens=2, temperature=0)
    assert len(tokens(m, PROMPT, eos=(first,), max_new_tokens=20, temperature=0)) == 1
    out = tokens(m, PROMPT, eos=(first, second, 9), max_new_tokens=20, temperature=0, min_new_tokens=6)
    assert len(out) >= 6 and not set(out[:5]) & {first, second, 9}


def test_max_time_stops_early():
    m = model()
    out = tokens(m, PROMPT, max_new_tokens=500, temperature=0, max_time=1e-9)
    assert len(out) == 1


def test_logprobs_are_the_models_raw_log_softmax():
    m = model()
    rows = outputs(m, [PROMPT, PROMPT[:2]], max_new_tokens=12, temperature=0.9, top_k=5, seed=3, logprobs=True,
                   top_logprobs=4)
    for prompt, row in zip([PROMPT, PROMPT[:2]], rows):
        full = torch.tensor([prompt + [o.token for o in row]])
        with torch.no_grad():
            logp = torch.log_softmax(m(full)[0][0], -1)  # (T, V) without cache
        for i, o in enumerate(row):
            want = logp[len(prompt) - 1 + i]
            assert abs(o.logprob - float(want[o.token])) < 1e-4
            want_v, want_i = want.topk(4)
            assert torch.allclose(torch.tensor([v for _, v in o.top]), want_v, atol=1e-4)
            assert [i for i, _ in o.top] == want_i.tolist()


def test_prompt_logprobs_echo():
    m = model()
    out = prompt_logprobs(m, PROMPT, top=3)
    assert out[0] == (None, [])
    with torch.no_grad():
        logp = torch.log_softmax(m(torch.tensor([PROMPT]))[0][0], -1)
    for t in range(1, len(PROMPT)):
        assert abs(out[t][0] - float(logp[t - 1, PROMPT[t]])) < 1e-5
        assert [i for i, _ in out[t][1]] == logp[t - 1].topk(3).indices.tolist()


# -- speculative decoding ---------------------------------------------------------------------------


def test_accept_or_resample_gives_exactly_the_target_distribution():
    """P(out = v) = q(v) min(1, p(v)/q(v)) + P(reject) * residual(v) = p(v), computed exactly."""
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        p = torch.softmax(torch.randn(7, generator=g) * 2, -1)
        q = torch.softmax(torch.randn(7, generator=g) * 2, -1)
        keep = torch.minimum(torch.ones(7), p / q)
        residual = (p - q).clamp(min=0)
        out = q * keep + (1 - (q * keep).sum()) * residual / residual.sum()
        assert torch.allclose(out, p, atol=1e-6)
        # and the function implements that rule: accepted iff u < p/q, else a residual token
        x = int(torch.argmax(q / p))  # a token the draft over-proposes: sometimes rejected
        ok, tok = accept_or_resample(p, q, x, u=0.999, generator=g)
        assert not ok and residual[tok] > 0
        ok, tok = accept_or_resample(p, q, x, u=0.0, generator=g)
        assert ok and tok == x


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_greedy_equals_target_greedy(k):
    target, draft = model(seed=0, n_layer=3, n_embd=48), model(seed=1, n_layer=1, n_embd=16)
    for prompt in (PROMPT, [9]):
        cfg = GenerateConfig(max_new_tokens=40, temperature=0, repetition_penalty=1.2)
        want = tokens(target, prompt, max_new_tokens=40, temperature=0, repetition_penalty=1.2)
        stats = SpeculativeStats()
        got = list(speculative_ids(target, draft, prompt, cfg, num_draft=k, stats=stats))
        assert got == want
        assert 0 <= stats.acceptance_rate <= 1 and stats.proposed >= 40 // (k + 1)
    # the target as its own draft: every proposal is accepted
    stats = SpeculativeStats()
    list(speculative_ids(target, target, PROMPT, GenerateConfig(max_new_tokens=20, temperature=0), num_draft=4, stats=stats))
    assert stats.acceptance_rate == 1.0


def test_speculative_greedy_stops_at_eos():
    target, draft = model(seed=0), model(seed=1, n_layer=1)
    want = tokens(target, PROMPT, max_new_tokens=30, temperature=0)
    eos = want[6]
    got = list(speculative_ids(target, draft, PROMPT, GenerateConfig(max_new_tokens=30, temperature=0),
                               eos_ids=(eos,), num_draft=4))
    assert got == want[:want.index(eos) + 1]


def test_speculative_sampling_follows_the_target_distribution():
    """Two sampled tokens from a vocabulary of 6: the empirical joint distribution over 36 pairs,
    from 3000 speculative runs, matches the target's exact one (total variation well under the
    draft's own distance from it)."""
    V = 6
    target, draft = model(seed=0, vocab=V, n_embd=16), model(seed=3, vocab=V, n_layer=1, n_embd=16)
    prompt = [1, 2, 3]
    cfg = dict(max_new_tokens=2, temperature=1.5, top_k=5)

    def exact(m):
        probs = {}
        with torch.no_grad():
            p1 = process_logits(m(torch.tensor([prompt]))[0][:, -1], torch.tensor([prompt]), GenerateConfig(**cfg)).softmax(-1)[0]
            for a in range(V):
                ctx = torch.tensor([prompt + [a]])
                p2 = process_logits(m(ctx)[0][:, -1], ctx, GenerateConfig(**cfg)).softmax(-1)[0]
                for b in range(V):
                    probs[(a, b)] = float(p1[a] * p2[b])
        return probs

    want, draft_dist = exact(target), exact(draft)
    counts = dict.fromkeys(itertools.product(range(V), range(V)), 0)
    n = 3000
    for seed in range(n):
        got = list(speculative_ids(target, draft, prompt, GenerateConfig(seed=seed, **cfg), num_draft=2))
        counts[tuple(got)] += 1
    tv = 0.5 * sum(abs(counts[k] / n - want[k]) for k in want)
    tv_draft = 0.5 * sum(abs(draft_dist[k] - want[k]) for k in want)
    assert tv_draft > 0.15  # the draft really is a different model
    assert tv < 0.06  # sampling noise for 36 cells and 3000 draws is about 0.03


# -- precision --------------------------------------------------------------------------------------


def test_packed_layers_match_their_float_weights():
    from arlm.compress.quantize import quantize
    from arlm.compress.int8 import QuantizedLinear

    m = model()
    ref = {n: mod.weight.detach().clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}
    for fmt in ("bfloat16", "int8"):
        q = quantize(model(), fmt)
        for n, mod in q.named_modules():
            if n in ref:
                assert isinstance(mod, QuantizedLinear)
                w = mod.dequantized()
                if fmt == "bfloat16":
                    assert torch.equal(w, ref[n].to(torch.bfloat16).float())
                else:  # within half a quantisation step of each output channel
                    step = ref[n].abs().amax(1, keepdim=True) / 127
                    assert ((w - ref[n]).abs() <= step / 2 + 1e-7).all()
        x = torch.randint(0, 61, (2, 10))
        with torch.no_grad():
            a, b = m(x)[0], q(x)[0]
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_int8_agrees_with_float32_on_real_text(trained_model):
    import arlm
    from tests.conftest import hamlet_agreement

    ref = arlm.load(trained_model, device="cpu")
    q = arlm.load(trained_model, device="cpu", precision="int8")
    assert hamlet_agreement(ref, q) >= 0.97
    assert q.generate("HAMLET.", max_new_tokens=20, temperature=0)  # decodes end to end


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_low_precision_kv_cache_gives_the_uncached_tokens(trained_model, precision):
    """Low-precision weights on CPU keep the KV cache in bfloat16 (half the attention reads); greedy
    decoding with it makes the tokens of recomputing every window in float32 without a cache."""
    import arlm

    q = arlm.load(trained_model, device="cpu", precision=precision)
    assert q.model.cache_dtype == torch.bfloat16
    assert q.model.new_cache(1, 8).k[0].dtype == torch.bfloat16
    prompts = ["HAMLET.\n", "What say you, my lord?"]
    kw = dict(max_new_tokens=60, temperature=0)
    assert q.generate(prompts, **kw) == q.generate(prompts, use_cache=False, **kw)


def compare_compiled(m, cases):
    def run(prompts, **kw):
        rows = outputs(m, prompts, logprobs=True, **kw)
        return [[o.token for o in r] for r in rows], [[o.logprob for o in r] for r in rows]

    for prompts, kw in cases:
        want_tokens, want_logprobs = run(prompts, **kw)
        got_tokens, got_logprobs = run(prompts, compile=True, **kw)
        assert got_tokens == want_tokens
        assert torch.allclose(torch.tensor(sum(got_logprobs, [])), torch.tensor(sum(want_logprobs, [])), atol=1e-4)


def graphs(m) -> list:
    """The precompiled steps of this model's structure (arlm/generate/step.py)."""
    from arlm.generate import step

    structure = tuple(type(x) for x in m.modules())
    return [fn for key, fn in step._PRECOMPILED if key[:-1] == structure]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_compiled_decode_step_equals_eager(precision):
    """The precompiled decode step (kernels as custom operators, called without Dynamo's guards) gives
    the eager tokens and log-probabilities, in one process, across generations of different prompt
    lengths, cache lengths and batch sizes, sampling, a 1-token prompt and a window that slides twice;
    two graphs serve them all (one row, several rows)."""
    from arlm.compress.quantize import quantize

    m = quantize(model(vocab=64, n_embd=64, block_size=40), precision)
    # bfloat16 and int8 models have the same module types, so the other precision's graphs share the key
    before = {id(fn) for fn in graphs(m)}
    batch = [PROMPT, [3, 1], PROMPT[:4]]  # 6 rows with 2 sequences each
    cases = [(PROMPT, dict(max_new_tokens=24, temperature=0)),
             (PROMPT[:3], dict(max_new_tokens=30, temperature=0)),  # another length: other cache, other positions
             (batch, dict(max_new_tokens=12, temperature=0, num_return_sequences=2)),
             (batch[:2], dict(max_new_tokens=12, temperature=0.8, seed=1)),
             ([7], dict(max_new_tokens=20, temperature=0)),
             (PROMPT, dict(max_new_tokens=70, temperature=1.0, seed=3))]  # slides at 40 tokens
    compare_compiled(m, cases)
    assert len([fn for fn in graphs(m) if id(fn) not in before]) == 2


def test_compiled_step_equals_eager_on_a_tiny_model():
    """The compiled path in the default run: one row and a batch, greedy and sampled, one graph each."""
    m = model(vocab=64, n_embd=32, block_size=32)
    compare_compiled(m, [(PROMPT, dict(max_new_tokens=8, temperature=0)),
                         ([PROMPT, [3, 1]], dict(max_new_tokens=8, temperature=0.9, seed=2))])
    assert len(graphs(m)) == 2


@pytest.mark.slow
def test_compiled_decoding_with_a_sliding_window():
    """A sliding window shorter than the cache is part of the mask: the compiled step gives the eager results."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=61, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, dropout=0.0,
                      pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False,
                      sliding_window=8)).eval()
    compare_compiled(m, [(PROMPT, dict(max_new_tokens=30, temperature=1.0, seed=1))])
