"""Damaged and hand-edited files of an arlm model folder (config.json, model.safetensors, tokenizer.json),
read by every verb that loads a model: one line naming the file and what is wrong, nothing changed."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import copy, edit_json, has, refused, set_key

GEN = ["--prompt", "A", "--max-new-tokens", "2", "--device", "cpu"]


@pytest.fixture
def ckpt(run_dir, tmp_path):
    """A copy of the tiny run's best/ checkpoint."""
    return copy(run_dir / "best", tmp_path / "ckpt")


def generate_refused(capsys, ckpt, pattern, tmp_path):
    return refused(capsys, ["generate", "--model", ckpt, *GEN], pattern, keep=tmp_path)


# -- config.json ---------------------------------------------------------------------------------

BAD_CONFIGS = [
    # (dotted key, value, what the message must say: the file, the key, what was found / expected)
    ("model.n_head", 0, has(r"config\.json", "n_head", "positive")),
    ("model.n_embd", 31, has(r"config\.json", r"n_embd \(31\)", "divisible", "n_head")),
    ("model.vocab_size", -5, has(r"config\.json", "vocab_size", "-5")),
    ("model.block_size", "x", has(r"config\.json", "block_size", "integer", "'x'")),
    ("model.block_size", 0, has(r"config\.json", "block_size", "positive")),
    ("model.activation", "swish2", has(r"config\.json", "activation", "'swish2'", "gelu_tanh")),
    ("model.norm", "batchnorm", has(r"config\.json", "norm", "'batchnorm'", "rmsnorm")),
    ("model.pos_embedding", "alibi", has(r"config\.json", "pos_embedding", "'alibi'")),
    ("model.dropout", 2.0, has(r"config\.json", "dropout")),
    ("model.n_layers", 2, has(r"config\.json", "unknown", "'n_layers'", "n_layer'")),
    ("model.type", "transformer", has(r"config\.json", "type", "'transformer'", "gpt")),
    ("model_type", "mamba", has(r"config\.json", "model_type", "'mamba'")),
    ("model", 5, has(r"config\.json", "model", "table")),
    ("model.tie_embeddings", "yes", has(r"config\.json", "tie_embeddings", "true or false")),
    ("train.lr", "fast", has(r"config\.json", "lr", "number", "'fast'")),
    ("train.sampling", "shuffle", has(r"config\.json", "sampling", "'shuffle'")),
    ("eos_token_ids", "x", has(r"config\.json", "eos_token_ids")),
    ("eos_token_ids", [99999], has(r"config\.json", "eos_token_ids", "99999", "vocabulary")),
    ("lora", 5, has(r"config\.json", "lora")),
    ("generation", {"temperature": -1}, has(r"config\.json", "temperature", ">= 0", "--temperature")),
    ("generation", {"top_k": "x"}, has(r"config\.json", "top_k", "integer")),
    ("step", "ten", has(r"config\.json", "step", "integer")),
    ("model.n_layer", 10**18, has(r"config\.json", "parameters", "bytes")),  # not even built on the meta device
    ("model.vocab_size", 10**18, has(r"config\.json", "parameters", "do not belong together")),
]


@pytest.mark.parametrize("key, value, pattern", BAD_CONFIGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_hand_edited_config(capsys, ckpt, tmp_path, key, value, pattern):
    edit_json(ckpt / "config.json", lambda d: set_key(d, key, value))
    generate_refused(capsys, ckpt, pattern, tmp_path)


def test_config_nan_and_missing_model(capsys, ckpt, tmp_path):
    text = (ckpt / "config.json").read_text()
    data = json.loads(text)
    data["model"]["rope_theta"] = math.nan
    (ckpt / "config.json").write_text(json.dumps(data))  # Python writes the NaN literal JSON does not have
    generate_refused(capsys, ckpt, has(r"config\.json", "rope_theta", "finite"), tmp_path)
    del data["model"]
    (ckpt / "config.json").write_text(json.dumps(data))
    generate_refused(capsys, ckpt, r"config\.json.*'model'.*missing", tmp_path)


@pytest.mark.parametrize("content, pattern", [
    ("", r"config\.json.*(empty|not valid JSON)"),
    ("{\"model\": ", r"config\.json.*not valid JSON"),
    ("[1, 2]", r"config\.json.*object"),
    ("\xff\xfe", r"config\.json.*(UTF-8|JSON)"),
])
def test_damaged_config(capsys, ckpt, tmp_path, content, pattern):
    (ckpt / "config.json").write_text(content, encoding="latin-1")
    generate_refused(capsys, ckpt, pattern, tmp_path)


def test_config_is_a_folder(capsys, ckpt, tmp_path):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    generate_refused(capsys, ckpt, r"config\.json", tmp_path)


def test_every_verb_that_loads_refuses_the_same_file(capsys, ckpt, tmp_path, char_data):
    edit_json(ckpt / "config.json", lambda d: set_key(d, "model.n_head", 0))
    text = tmp_path / "t.txt"
    text.write_text("To be or not to be")
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"prompt": "To", "reference": "be"}) + "\n")
    for argv in (["eval", "--model", ckpt, "--data", text], ["eval", "--model", ckpt, "--task", task],
                 ["convert", "--to-hf", ckpt, "--out", tmp_path / "hf"],
                 ["finetune", "--model", ckpt, "--data", char_data, "--out", tmp_path / "ft"],
                 ["chat", "--model", ckpt]):
        refused(capsys, argv, r"config\.json.*n_head", keep=tmp_path)


# -- model.safetensors ---------------------------------------------------------------------------


def rewrite_weights(ckpt, change):
    sd = load_file(str(ckpt / "model.safetensors"))
    save_file(change(sd), str(ckpt / "model.safetensors"))


def test_truncated_and_garbage_weights(capsys, ckpt, tmp_path):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    generate_refused(capsys, ckpt, r"model\.safetensors.*(damaged|truncated)", tmp_path)
    f.write_bytes(b"")
    generate_refused(capsys, ckpt, r"model\.safetensors.*(damaged|truncated|empty)", tmp_path)
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    generate_refused(capsys, ckpt, r"model\.safetensors", tmp_path)


def test_wrong_shape_names_the_tensor(capsys, ckpt, tmp_path):
    rewrite_weights(ckpt, lambda sd: {**sd, "transformer.h.0.attn.c_attn.weight": torch.zeros(7, 32)})
    generate_refused(capsys, ckpt, r"transformer\.h\.0\.attn\.c_attn\.weight.*\(7, 32\).*\(96, 32\)", tmp_path)


def test_wrong_dtype_names_the_tensor(capsys, ckpt, tmp_path):
    rewrite_weights(ckpt, lambda sd: {**sd, "transformer.ln_f.weight": torch.zeros(32, dtype=torch.int64)})
    generate_refused(capsys, ckpt, r"transformer\.ln_f\.weight.*int64", tmp_path)


def test_missing_and_extra_tensors(capsys, ckpt, tmp_path):
    def drop(sd):
        del sd["transformer.ln_f.bias"]
        return sd
    rewrite_weights(ckpt, drop)
    generate_refused(capsys, ckpt, r"transformer\.ln_f\.bias.*missing", tmp_path)
    rewrite_weights(ckpt, lambda sd: {**sd, "transformer.ln_f.bias": torch.zeros(32), "extra.weight": torch.zeros(2)})
    generate_refused(capsys, ckpt, r"extra\.weight", tmp_path)


def test_non_finite_weights(capsys, ckpt, tmp_path):
    def poison(sd):
        sd["transformer.h.1.mlp.c_fc.weight"][3, 4] = math.nan
        return sd
    rewrite_weights(ckpt, poison)
    generate_refused(capsys, ckpt, r"transformer\.h\.1\.mlp\.c_fc\.weight.*(NaN|not finite)", tmp_path)


def test_config_larger_than_weights_allocates_nothing(capsys, ckpt, tmp_path):
    """A config claiming a huge model next to small weights: refused from the file header, no allocation."""
    edit_json(ckpt / "config.json", lambda d: set_key(set_key(d, "model.n_embd", 1_000_000), "model.n_head", 1))
    generate_refused(capsys, ckpt, has(r"config\.json", "parameters", "do not belong together"), tmp_path)


# -- tokenizer.json -------------------------------------------------------------------------------

BAD_TOKENIZERS = [
    ("missing", None, r"tokenizer\.json.*missing"),
    ("not json", "{", r"tokenizer\.json.*not valid JSON"),
    ("chars not a list", {"arlm": "char", "version": 1, "chars": "abc"}, has(r"tokenizer\.json", "chars", "list")),
    ("multi-char entry", {"arlm": "char", "version": 1, "chars": ["a", "bc"]}, r"tokenizer\.json.*'bc'"),
    ("duplicate", {"arlm": "char", "version": 1, "chars": ["a", "a"]}, has(r"tokenizer\.json", "twice", "'a'")),
    ("non-string", {"arlm": "char", "version": 1, "chars": ["a", 5]}, r"tokenizer\.json.*5"),
    ("surrogate", {"arlm": "char", "version": 1, "chars": ["a", "\ud800"]}, r"tokenizer\.json.*(surrogate|U\+D800)"),
    ("unknown kind", {"arlm": "wordpiece"}, r"tokenizer\.json.*not a tokenizer"),
    ("bpe garbage", {"model": {"type": "BPE", "vocab": 5}}, r"tokenizer\.json"),
]


@pytest.mark.parametrize("what, content, pattern", BAD_TOKENIZERS, ids=[c[0] for c in BAD_TOKENIZERS])
def test_damaged_tokenizer(capsys, ckpt, tmp_path, what, content, pattern):
    f = ckpt / "tokenizer.json"
    if content is None:
        f.unlink()
    else:
        f.write_text(content if isinstance(content, str) else json.dumps(content))
    generate_refused(capsys, ckpt, pattern, tmp_path)


def test_tokenizer_larger_than_the_model(capsys, ckpt, tmp_path):
    """More token ids than embedding rows: refused at load, not an IndexError in the middle of decoding."""
    edit_json(ckpt / "tokenizer.json", lambda d: {**d, "chars": d["chars"] + [chr(0x4E00 + i) for i in range(10)]})
    generate_refused(capsys, ckpt, r"tokenizer.*(\d+) tokens.*vocab_size", tmp_path)


# -- loading code is never run --------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def test_malicious_trainer_state_is_refused_without_weights_only_advice(capsys, run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = copy(run_dir, tmp_path / "run")
    torch.save({"step": Evil()}, run / "latest" / "trainer_state.pt")
    line = refused(capsys, ["train", "--resume", run, "--max-steps", 100, "--no-progress"], r"trainer_state\.pt",
                   keep=tmp_path)
    assert "weights_only" not in line and not (tmp_path / "PWNED").exists()


def test_trainer_state_of_the_wrong_shape(capsys, run_dir, tmp_path):
    run = copy(run_dir, tmp_path / "run")
    for state in ({}, [1, 2], {"step": "x"}, b"not a zip"):
        f = run / "latest" / "trainer_state.pt"
        f.write_bytes(state) if isinstance(state, bytes) else torch.save(state, f)
        refused(capsys, ["train", "--resume", run, "--max-steps", 100, "--no-progress"], r"trainer_state\.pt",
                keep=tmp_path)


def test_pickle_is_never_unpickled_for_weights(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(Evil()))
    generate_refused(capsys, ckpt, r"model\.safetensors", tmp_path)
    assert not (tmp_path / "PWNED").exists()
