"""arlm -> Hugging Face -> arlm: transformers loads our export with no custom code, gives the same
logits and token ids, and converting back restores bit-identical weights."""

from __future__ import annotations

import pytest
import torch

from arlm.config import GPTConfig
from arlm.errors import UserError
from arlm.interop.hf import export_hf, load_hf
from arlm.model.gpt import GPT
from arlm.tokenizers import BPETokenizer, CharTokenizer
from tests.interop.hf_models import MIXED_TEXT

tf = pytest.importorskip("transformers")

ROPE = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, norm_eps=1e-6)
ARCHS = {
    "gpt2": dict(),
    "gpt2-untied-relu-nobias": dict(tie_embeddings=False, activation="relu", intermediate_size=72, bias=False),
    "llama-gqa-untied": dict(ROPE, n_kv_head=2, tie_embeddings=False, rope_theta=5000.0),
    "llama-mqa-biases-llama3": dict(ROPE, n_kv_head=1, head_dim=16, bias=True, rope_scaling="llama3", rope_factor=4.0,
                                    rope_original_block_size=16),
    "llama-linear-tied": dict(ROPE, rope_scaling="linear", rope_factor=2.0),
    "llama-geglu": dict(ROPE, activation="gelu_tanh"),
    "qwen2": dict(ROPE, qkv_bias=True, n_kv_head=2),
    "mistral-sliding-window": dict(ROPE, n_kv_head=2, sliding_window=12, tie_embeddings=False),
    "gpt2-relu2-zero-init": dict(activation="relu2", zero_init_proj=True),
}


def random_model(vocab_size: int, seed: int, **arch) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=32, dropout=0.0, **arch)
    model = GPT(cfg).eval()
    with torch.no_grad():  # norms start at exactly 1 / 0: perturb everything so no tensor can hide
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tokenizers_():
    return {"char": CharTokenizer.train([MIXED_TEXT]), "bpe": BPETokenizer.train([MIXED_TEXT], 300)}


@pytest.mark.parametrize("tok_kind", ["char", "bpe"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_round_trip_through_transformers(arch, tok_kind, tokenizers_, tmp_path):
    tokenizer = tokenizers_[tok_kind]
    model = random_model(tokenizer.vocab_size, seed=len(arch), **ARCHS[arch])
    out = export_hf(model, tokenizer, tmp_path / "hf")

    hf = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    expected = {"gpt2": "GPT2LMHeadModel", "mistral": "MistralForCausalLM"}.get(arch.split("-")[0], "LlamaForCausalLM")
    assert type(hf).__name__ == expected
    hf_tok = tf.AutoTokenizer.from_pretrained(out)
    text = MIXED_TEXT[:300]
    ids = tokenizer.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == tokenizer.decode(ids) == text
    x = torch.tensor([ids[:60]])
    with torch.no_grad():
        assert (hf(x).logits - model(x)[0]).abs().max().item() <= 1e-5

    back, back_tok, _ = load_hf(out)
    assert back_tok.encode(text) == ids
    ours, theirs = model.state_dict(), back.state_dict()
    for k, v in ours.items():
        assert torch.equal(theirs[k], v), k
    # GPT-2 has biases everywhere and Llama's attention_bias covers q, k, v and o: missing ones are zeros
    extra = set(theirs) - set(ours)
    assert all(not theirs[k].any() for k in extra)
    assert bool(extra) == (arch in ("gpt2-untied-relu-nobias", "qwen2"))


def test_literal_end_of_text_stays_text_in_transformers(tokenizers_, tmp_path):
    tokenizer = tokenizers_["bpe"]
    out = export_hf(random_model(tokenizer.vocab_size, 0), tokenizer, tmp_path / "hf")
    text = "a <|endoftext|> b"
    assert tf.AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)


def test_architectures_transformers_cannot_express_are_refused(tokenizers_, tmp_path):
    tokenizer = tokenizers_["char"]
    for arch, message in ((dict(pos_embedding="rope"), "cannot be written as Llama"),
                          (dict(n_kv_head=2), "cannot be written as GPT-2"),
                          (dict(qk_norm=True), r"no query/key normalisation \(model.qk_norm\).*--format onnx"),
                          (dict(logit_softcap=30.0), r"no logit soft-capping")):
        with pytest.raises(UserError, match=message):
            export_hf(random_model(tokenizer.vocab_size, 0, **arch), tokenizer, tmp_path / "x")
        assert not (tmp_path / "x").exists()
