"""Parity with transformers on the same weights: logits, KV cache, padding, greedy and beam search.

Every model is a tiny random checkpoint that transformers itself builds and saves (several
architectures and shapes: grouped/multi-query attention, untied embeddings, biases, RoPE scaling);
arlm loads the saved folder with its own code, and both run on the same input.
"""

from __future__ import annotations

import pytest
import torch

from arlm.config import GenerateConfig
from arlm.generate.beam import beam_search
from arlm.generate.engine import generate_ids
from arlm.interop.load import load_model
from tests.interop.hf_models import VOCAB, make_hf_model

pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
CONFIGS = {
    "gpt2": ("gpt2", {}),
    "gpt2-untied-gelu-ninner": ("gpt2", dict(tie_word_embeddings=False, activation_function="gelu", n_inner=80,
                                             n_embd=48, n_head=3)),
    "llama-gqa": ("llama", {}),
    "llama-mha-tied-theta": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=500.0)),
    "llama-mqa-headdim-biases-llama3rope": ("llama", dict(num_key_value_heads=1, head_dim=16, attention_bias=True,
                                                          mlp_bias=True, rope_scaling=LLAMA3)),
    "llama-linear-rope": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, num_hidden_layers=3)),
    "mistral-sliding-window-8": ("mistral", dict(sliding_window=8)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    kind, overrides = CONFIGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(d, kind, seed=len(request.param), **overrides)
    ours, _, _ = load_model(d)
    return hf, ours


def padded_batch(lengths: list[int], seed: int = 0):
    """Left-padded random prompts: ids (B, T), mask (B, T) 1 = real token, position ids (B, T)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(1, VOCAB, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, T - n:] = 1
    ids = ids.masked_fill(mask == 0, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@torch.no_grad()
def test_logits_match_on_a_padded_batch_with_and_without_kv_cache(pair):
    hf, ours = pair
    ids, mask, positions = padded_batch([23, 9, 16])
    real = mask.bool()
    ref = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits  # (B, T, V)
    full, _ = ours(ids, key_mask=real, positions=positions)
    assert (full - ref)[real].abs().max().item() <= 1e-4

    # KV cache, each row in its own cache row from position 0 (as the engine runs them): prefill up to
    # 11 tokens, then one token at a time
    for b in range(ids.size(0)):
        row = ids[b][real[b]][None]  # (1, L)
        L = row.size(1)
        cache = ours.new_cache(1, L)
        chunks = [ours(row[:, :11], cache=cache, input_pos=torch.arange(min(11, L))[None], kv_len=min(11, L))[0]]
        for t in range(11, L):
            chunks.append(ours(row[:, t:t + 1], cache=cache, input_pos=torch.tensor([[t]]))[0])
        cached = torch.cat(chunks, dim=1)[0]
        assert (cached - ref[b][real[b]]).abs().max().item() <= 1e-4
    assert ref[real].abs().max().item() > 0.5  # logits big enough for the comparison to mean something


@torch.no_grad()
def test_logits_match_unpadded_prompt(pair):
    hf, ours = pair
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    assert (ours(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-4


def test_greedy_generation_matches_64_tokens(pair):
    hf, ours = pair
    prompt = torch.randint(1, VOCAB, (1, 7), generator=torch.Generator().manual_seed(5))
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=64,
                      min_new_tokens=64, pad_token_id=0)[0, 7:].tolist()
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=64)
    got = generate_ids(ours, prompt[0].tolist(), cfg)[0]
    assert len(ref) == 64 and got == ref


BEAM_CASES = [dict(length_penalty=lp, early_stopping=es) for lp in (0.6, 1.0) for es in (True, False)] + [
    dict(length_penalty=1.0, early_stopping=True, repetition_penalty=1.3, no_repeat_ngram_size=2)]


@pytest.mark.parametrize("controls", BEAM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_beam_search_matches_sequences_and_scores(pair, controls):
    hf, ours = pair
    prompt = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(11))
    # End-of-sequence: a token greedy decoding emits early, so hypotheses really finish at different lengths.
    greedy = generate_ids(ours, prompt[0].tolist(), GenerateConfig(temperature=0.0, max_new_tokens=8))[0]
    eos = greedy[3]
    pad = next(t for t in range(1, VOCAB) if t != eos)
    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), num_beams=4, num_return_sequences=2,
                      max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=pad, output_scores=True,
                      return_dict_in_generate=True, **controls)
    cfg = GenerateConfig(num_beams=4, num_return_sequences=2, max_new_tokens=20, **controls)
    hyps = beam_search(ours, prompt[0].tolist(), cfg, eos_ids=(eos,))
    assert len(hyps) == 2
    for row, hyp in zip(out.sequences, hyps):
        gen = row[6:].tolist()
        n = len(hyp.tokens)
        assert gen[:n] == hyp.tokens
        assert all(t == pad for t in gen[n:])
    ref_scores = out.sequences_scores.tolist()
    assert max(abs(a - h.score) for a, h in zip(ref_scores, hyps)) <= 1e-4
