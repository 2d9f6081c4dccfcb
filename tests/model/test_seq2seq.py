"""The encoder-decoder on tiny configs: every family's shape, its parameter count from the config, the
cache (decoding step by step == the whole target at once), padding, relative buckets and sinusoids as
T5 and Marian define them, and configs that are refused."""

from __future__ import annotations

import math

import pytest
import torch

from arlm.config import Seq2SeqConfig, model_config
from arlm.errors import UserError
from arlm.model.registry import build_model, parameter_count
from arlm.model.seq2seq import relative_bucket, sinusoids

BASE = dict(vocab_size=50, block_size=24, max_source_len=16, n_layer=2, n_decoder_layer=3, n_embd=32, n_head=4,
            dropout=0.0)
FAMILIES = {
    "t5": dict(pos_embedding="relative", mlp="standard", activation="relu", scale_attention=False,
               scale_decoder_output=True),
    "t5-v1.1": dict(pos_embedding="relative", head_dim=12, tie_embeddings=False, scale_attention=False),
    "bart": dict(pos_embedding="learned", norm="layernorm", post_norm=True, embedding_norm=True, final_norm=False,
                 bias=True, mlp="standard", activation="gelu", logits_bias=True, decoder_start_token_id=2),
    "mbart": dict(pos_embedding="learned", norm="layernorm", embedding_norm=True, bias=True, mlp="standard",
                  scale_embedding=True, logits_bias=True),
    "pegasus": dict(pos_embedding="sinusoidal", norm="layernorm", bias=True, mlp="standard", activation="relu",
                    scale_embedding=True),
    "marian": dict(pos_embedding="sinusoidal", norm="layernorm", post_norm=True, final_norm=False, bias=True,
                   mlp="standard", activation="silu", scale_embedding=True, logits_bias=True, decoder_start_token_id=49),
}


def model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(Seq2SeqConfig(**BASE, **FAMILIES[name])).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if m.config.logits_bias:
            m.final_logits_bias.normal_()
    return m


@pytest.mark.parametrize("name", FAMILIES)
def test_parameter_count_from_the_config_matches_the_model(name):
    m = model(name)
    assert parameter_count(m.config) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", FAMILIES)
def test_step_by_step_decoding_with_the_cache_equals_the_whole_target(name):
    m = model(name)
    src = torch.randint(0, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 4:] = False  # sources of different lengths, right-padded
    mask[2, 7:] = False
    tgt = torch.randint(0, 50, (3, 8))
    with torch.no_grad():
        whole, _ = m(tgt, src=src, src_mask=mask)
        cache = m.new_cache(3, 12)
        m.prime_cache(cache, src, mask)
        steps = [m(tgt[:, :3], cache=cache, input_pos=torch.arange(3).expand(3, 3), kv_len=3)[0]]
        steps += [m(tgt[:, t:t + 1], cache=cache, input_pos=torch.full((3, 1), t), kv_len=t + 1)[0] for t in range(3, 8)]
    assert (torch.cat(steps, 1) - whole).abs().max() <= 1e-5


def test_padding_a_source_does_not_change_its_outputs():
    m = model("t5-v1.1")
    src = torch.randint(0, 50, (1, 5))
    tgt = torch.randint(0, 50, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.zeros(1, 11, dtype=torch.bool)
    mask[0, :5] = True
    with torch.no_grad():
        alone, _ = m(tgt, src=src)
        with_pad, _ = m(tgt, src=padded, src_mask=mask)
    assert (alone - with_pad).abs().max() <= 1e-5


def test_training_loss_is_cross_entropy_of_the_targets_and_gradients_reach_the_encoder():
    m = model("bart").train()
    src, tgt = torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (2, 5))
    targets = tgt.clone()
    targets[0, 3:] = -1  # padding is ignored
    logits, loss = m(tgt, targets, src=src)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-1)
    assert torch.allclose(loss, want)
    loss.backward()
    assert m.encoder.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    m.checkpointing = True  # recomputed activations give the same gradients
    g0 = m.encoder.h[0].mlp.c_fc.weight.grad.clone()
    m.zero_grad()
    m(tgt, targets, src=src)[1].backward()  # (dropout 0: both passes compute the same function)
    assert torch.allclose(m.encoder.h[0].mlp.c_fc.weight.grad, g0, atol=1e-6)


def test_relative_buckets_follow_t5():
    pytest.importorskip("transformers")
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            want = T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
            assert torch.equal(relative_bucket(rel, bidirectional, buckets, distance), want)


def test_sinusoids_follow_marian():
    pytest.importorskip("transformers")
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    table = MarianSinusoidalPositionalEmbedding(64, 32).create_weight()
    assert (sinusoids(64, 32) - table).abs().max() <= 1e-6
    assert sinusoids(3, 4)[1, 0] == pytest.approx(math.sin(1.0))


@pytest.mark.parametrize("change, message", [
    (dict(n_embd=30), "divisible by model.n_head"),
    (dict(pos_embedding="rope"), "pos_embedding"),
    (dict(relative_buckets=1), "relative_buckets >= 2"),
    (dict(pos_embedding="sinusoidal", n_embd=33, head_dim=3, n_head=11), "even n_embd"),
    (dict(decoder_start_token_id=50), "outside the vocabulary"),
    (dict(max_source_len=-1), "max_source_len must be >= 0"),
])
def test_bad_config_is_refused_by_name(change, message):
    with pytest.raises(UserError, match=message):
        model_config({"type": "seq2seq", **BASE, **change}).validate()


def test_gpt_keys_that_do_not_apply_are_named():
    with pytest.raises(UserError, match="does not apply to seq2seq models"):
        model_config({"type": "seq2seq", **BASE, "n_kv_head": 2})
