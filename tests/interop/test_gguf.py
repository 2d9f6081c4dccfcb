"""GGUF export (arlm/interop/gguf.py): read back with gguf.GGUFReader, tensors and metadata; the Llama
layout's q/k permutation turns arlm's rotary embedding into llama.cpp's; and (slow, with the optional
llama-cpp-python) llama.cpp's greedy continuation of the exported file equals arlm's."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from arlm.config import GPTConfig  # noqa: E402
from arlm.errors import UserError  # noqa: E402
from arlm.interop.gguf import _bytes_to_unicode, _permute_qk, export_gguf, gpt2_tensors, llama_tensors  # noqa: E402
from arlm.model.gpt import GPT  # noqa: E402
from arlm.tokenizers.char import CharTokenizer  # noqa: E402

LLAMA = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, tie_embeddings=False,
             n_kv_head=2)
TOK = CharTokenizer.train(["abcdefgh ijk\nlmnop,.;é"])


def model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=TOK.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=32, dropout=0.0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


def read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in r.fields.items()}

    def value(key):
        f = fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]

    def strings(key):
        f = fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data]

    tensors = {t.name: t for t in r.tensors}
    return value, strings, tensors


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_f32_read_back(tmp_path, arch):
    m = model(**(LLAMA if arch == "llama" else {}))
    summary = export_gguf(m, TOK, tmp_path / "m.gguf", "f32")
    assert summary["layout"] == arch
    value, strings, tensors = read(tmp_path / "m.gguf")
    assert value("general.architecture") == arch
    assert value(f"{arch}.block_count") == 2 and value(f"{arch}.context_length") == 32
    assert value(f"{arch}.embedding_length") == 64 and value(f"{arch}.attention.head_count") == 4
    if arch == "llama":
        assert value("llama.attention.head_count_kv") == 2 and value("llama.rope.dimension_count") == 16
    expected = gpt2_tensors(m) if arch == "gpt2" else llama_tensors(m)
    assert set(tensors) == set(expected)
    for name, t in expected.items():
        got = np.asarray(tensors[name].data).reshape(t.shape)
        assert np.array_equal(got, t.float().numpy()), name
    if arch == "gpt2":
        assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.eos_token_id") == TOK.eot_id


@pytest.mark.parametrize("dtype, tol", [("f16", 1e-3), ("q8_0", 1 / 127), ("q4_0", 1 / 7)])
def test_quantized_types_dequantize_close(tmp_path, dtype, tol):
    m = model()
    export_gguf(m, TOK, tmp_path / "m.gguf", dtype)
    _, _, tensors = read(tmp_path / "m.gguf")
    for name, t in gpt2_tensors(m).items():
        r = tensors[name]
        got = gguf.quants.dequantize(r.data, r.tensor_type).reshape(t.shape)
        want = t.float().numpy()
        if t.dim() == 1 or name == "position_embd.weight":
            assert r.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(got, want)
            continue
        blocks = np.abs(want).reshape(-1, 32).max(1, keepdims=True)  # each block's scale is set by its largest value
        assert (np.abs(got - want).reshape(-1, 32) <= tol * blocks + 1e-7).all(), name
    assert (tmp_path / "m.gguf").stat().st_size < {"f16": 0.55, "q8_0": 0.3, "q4_0": 0.2}[dtype] * 4 * sum(
        t.numel() for t in gpt2_tensors(m).values())


def test_tokenizer_entries(tmp_path):
    export_gguf(model(), TOK, tmp_path / "m.gguf", "f16")
    _, strings, _ = read(tmp_path / "m.gguf")
    tokens = strings("tokenizer.ggml.tokens")
    to_u = _bytes_to_unicode()
    assert tokens[TOK.stoi[" "]] == "Ġ" and tokens[TOK.stoi["\n"]] == "Ċ" and tokens[TOK.stoi["a"]] == "a"
    assert tokens[TOK.stoi["é"]] == to_u[0xC3] + to_u[0xA9]
    assert f"{to_u[0xC3]} {to_u[0xA9]}" in strings("tokenizer.ggml.merges")
    assert tokens[TOK.eot_id] == "<|endoftext|>"


def test_bpe_tokenizer_entries(tmp_path, corpus_dir):
    from arlm.tokenizers.bpe import BPETokenizer

    tok = BPETokenizer.train([(corpus_dir / "hamlet.txt").read_text()], 300)
    export_gguf(model(vocab_size=tok.vocab_size), tok, tmp_path / "m.gguf", "f16")
    _, strings, _ = read(tmp_path / "m.gguf")
    vocab = tok.tok.get_vocab()
    tokens = strings("tokenizer.ggml.tokens")
    assert all(tokens[i] == t for t, i in vocab.items())
    assert len(strings("tokenizer.ggml.merges")) == len(vocab) - 257  # 256 bytes + end-of-text are not merges


def test_permutation_turns_rotate_half_into_interleaved_pairs():
    """llama.cpp's llama rotates pairs (2i, 2i+1); arlm rotates (i, i + hs/2). For q = W x, rotating the halves
    of W x then permuting equals rotating the pairs of (permuted W) x."""
    hs, heads, C = 8, 3, 5
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(heads * hs, C, generator=g), torch.randn(C, generator=g)
    theta = torch.rand(hs // 2, generator=g) * 3
    cos, sin = theta.cos(), theta.sin()

    def halves(v):  # (hs,)
        a, b = v[:hs // 2], v[hs // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos])

    def pairs(v):
        a, b = v[0::2], v[1::2]
        out = torch.empty_like(v)
        out[0::2], out[1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    ours = torch.cat([halves(h) for h in (w @ x).split(hs)])
    theirs = torch.cat([pairs(h) for h in (_permute_qk(w, heads) @ x).split(hs)])
    torch.testing.assert_close(_permute_qk(ours[:, None], heads)[:, 0], theirs)


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="sliding-window"):
        export_gguf(model(**LLAMA, sliding_window=8), TOK, tmp_path / "a.gguf")
    with pytest.raises(UserError, match="tanh GELU"):
        export_gguf(model(activation="relu"), TOK, tmp_path / "b.gguf")
    with pytest.raises(UserError, match="unknown GGUF type"):
        export_gguf(model(), TOK, tmp_path / "c.gguf", "q2_k")
    assert not list(tmp_path.iterdir())


needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (pip install -e '.[llama]')")


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_llama_cpp_continues_as_arlm(trained_model, char_data, tmp_path, arch):
    """The exported file runs in llama.cpp and its greedy continuation equals arlm's (float32 weights)."""
    import arlm
    from arlm.config import GenerateConfig
    from arlm.generate.engine import generate_ids
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    path = trained_model
    if arch == "llama":
        path = tmp_path / "llama"
        train(tiny_train_config(char_data, path, max_steps=80, eval_interval=80, model={**LLAMA, "n_kv_head": 1}))
    lm = arlm.load(path)
    export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", "f32")
    prompt = lm.tokenizer.encode("ROMEO.\nWhat")
    ours = generate_ids(lm.model, prompt, GenerateConfig(max_new_tokens=20, min_new_tokens=20, temperature=0))[0]
    assert llama_cpp_greedy(tmp_path / "m.gguf", prompt, 20) == ours
    from llama_cpp import Llama  # and llama.cpp reads the text into the same tokens, and back

    llm = Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_threads=2, verbose=False)
    text = "ROMEO.\nWhat light, through yonder window?"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == lm.tokenizer.encode(text)
    assert llm.detokenize(ours).decode() == lm.tokenizer.decode(ours)


def llama_cpp_greedy(path, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation of token ids (every sampling control off)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False)
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(token)
        if len(out) == n:
            return out
    return out
