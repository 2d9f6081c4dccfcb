"""Hugging Face folders with damaged or hostile files: config.json, generation_config.json,
tokenizer_config.json, shard indexes, pickled weights. Read by generate, eval, convert and finetune."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.reliability.conftest import copy, edit_json, has, refused, set_key

GEN = ["--prompt", "A", "--max-new-tokens", "2", "--device", "cpu"]


@pytest.fixture
def hf(hf_dir, tmp_path):
    return copy(hf_dir, tmp_path / "hf")


BAD_HF_CONFIGS = [
    ("model_type", "gpt_neox", has(r"config\.json", r"model_type 'gpt_neox'", r"not supported")),
    ("n_layer", None, has(r"config\.json", r"'n_layer'", r"missing")),
    ("n_layer", "2", has(r"config\.json", r"n_layer", r"integer")),
    ("n_head", 0, has(r"config\.json", r"n_head", r"positive")),
    ("n_embd", 31, has(r"config\.json", r"divisible")),
    ("vocab_size", -1, has(r"config\.json", r"vocab_size")),
    ("n_positions", 0, has(r"config\.json", r"n_positions", "positive")),
    ("layer_norm_epsilon", "tiny", has(r"config\.json", r"layer_norm_epsilon", r"number")),
    ("layer_norm_epsilon", math.inf, has(r"config\.json", r"layer_norm_epsilon", r"finite")),
    ("activation_function", "gelu_fast", has(r"config\.json", r"gelu_fast", r"not supported")),
    ("tie_word_embeddings", "no", has(r"config\.json", r"tie_word_embeddings", r"true or false")),
    ("eos_token_id", "x", has(r"config\.json", r"eos_token_id")),
    ("n_layer", 10**18, has(r"config\.json", r"parameters", r"bytes")),
    ("n_positions", 10**18, has(r"config\.json", r"parameters", r"bytes")),
]


@pytest.mark.parametrize("key, value, pattern", BAD_HF_CONFIGS, ids=[f"{k}={v!r}" for k, v, _ in BAD_HF_CONFIGS])
def test_hand_edited_hf_config(capsys, hf, tmp_path, key, value, pattern):
    edit_json(hf / "config.json", lambda d: set_key(d, key, value, delete=value is None))
    refused(capsys, ["generate", "--model", hf, *GEN], pattern, keep=tmp_path)


def test_llama_config_checks(capsys, hf, tmp_path):
    """A Llama config.json with impossible head counts or RoPE scaling: named, before any tensor is read."""
    llama = dict(model_type="llama", vocab_size=70, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=3, max_position_embeddings=64)
    (hf / "config.json").write_text(json.dumps(llama))
    refused(capsys, ["generate", "--model", hf, *GEN], r"config\.json.*(n_kv_head|num_key_value_heads)", keep=tmp_path)
    (hf / "config.json").write_text(json.dumps({**llama, "num_key_value_heads": 2,
                                                 "rope_scaling": {"rope_type": "yarn", "factor": 4}}))
    refused(capsys, ["generate", "--model", hf, *GEN], has(r"config\.json", r"yarn", r"not supported"), keep=tmp_path)
    (hf / "config.json").write_text(json.dumps({**llama, "num_key_value_heads": 2, "rope_scaling": {"rope_type": "linear"}}))
    refused(capsys, ["generate", "--model", hf, *GEN], has(r"config\.json", r"factor"), keep=tmp_path)
    (hf / "config.json").write_text(json.dumps({**llama, "num_key_value_heads": 2, "rope_theta": -1}))
    refused(capsys, ["generate", "--model", hf, *GEN], has(r"config\.json", r"rope_theta"), keep=tmp_path)


BAD_GENERATION = [
    ({"temperature": -1.0}, has(r"generation_config\.json", r"temperature", r"--temperature")),
    ({"top_k": "x"}, has(r"generation_config\.json", r"top_k")),
    ({"top_p": 2.0}, has(r"generation_config\.json", r"top_p", r"--top-p")),
    ({"do_sample": "yes"}, has(r"generation_config\.json", r"do_sample")),
    ({"eos_token_id": [1, "x"]}, has(r"generation_config\.json", r"eos_token_id")),
    ({"max_new_tokens": -3}, has(r"generation_config\.json", r"max_new_tokens", r"--max-new-tokens")),
    ({"repetition_penalty": 0}, has(r"generation_config\.json", r"repetition_penalty")),
]


@pytest.mark.parametrize("change, pattern", BAD_GENERATION, ids=[json.dumps(c) for c, _ in BAD_GENERATION])
def test_bad_generation_config_names_the_file_and_the_flag(capsys, hf, tmp_path, change, pattern):
    edit_json(hf / "generation_config.json", lambda d: {**d, **change})
    refused(capsys, ["generate", "--model", hf, "--prompt", "A", "--device", "cpu"], pattern, keep=tmp_path)


def test_bad_generation_default_is_fine_when_the_flag_overrides_it(capsys, hf):
    from tests.reliability.conftest import run

    edit_json(hf / "generation_config.json", lambda d: {**d, "temperature": -1.0})
    code, out, err = run(capsys, ["generate", "--model", hf, *GEN, "--temperature", "0"])
    assert code == 0, err


@pytest.mark.parametrize("content, pattern", [
    ({"eos_token": 5}, has(r"tokenizer_config\.json", r"eos_token")),
    ({"eos_token": "<never>"}, has(r"tokenizer_config\.json", r"'<never>'", r"not in")),
    ({"chat_template": 5}, has(r"tokenizer_config\.json", r"chat_template")),
    ("{", has(r"tokenizer_config\.json", r"not valid JSON")),
])
def test_bad_tokenizer_config(capsys, hf, tmp_path, content, pattern):
    f = hf / "tokenizer_config.json"
    if isinstance(content, dict):
        edit_json(f, lambda d: {**d, **content})
    else:
        f.write_text(content)
    refused(capsys, ["generate", "--model", hf, *GEN], pattern, keep=tmp_path)


def test_broken_chat_template(capsys, hf, tmp_path, monkeypatch):
    import io

    edit_json(hf / "tokenizer_config.json", lambda d: {**d, "chat_template": "{% for m in messages %}"})
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    refused(capsys, ["chat", "--model", hf, "--device", "cpu"], has(r"chat template", r"not valid Jinja"), keep=tmp_path)


def split_weights(hf, index):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf / "model.safetensors"))
    (hf / "model.safetensors").unlink()
    save_file(sd, str(hf / "model-00001-of-00001.safetensors"))
    (hf / "model.safetensors.index.json").write_text(json.dumps(index(list(sd))))


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_shard_index_may_only_name_files_inside_the_folder(capsys, hf, tmp_path, target):
    split_weights(hf, lambda keys: {"weight_map": {k: target for k in keys}})
    (tmp_path / "outside.safetensors").write_bytes(b"")
    refused(capsys, ["generate", "--model", hf, *GEN], has(r"index\.json", r"outside"), keep=tmp_path)


def test_shards_linked_into_a_cache_load(capsys, hf, tmp_path):
    """Hugging Face's cache keeps snapshot files as links into ../../blobs: an index naming the link is fine."""
    from tests.reliability.conftest import run

    split_weights(hf, lambda keys: {"weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}})
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (hf / "model-00001-of-00001.safetensors").rename(blobs / "abc123")
    (hf / "model-00001-of-00001.safetensors").symlink_to(blobs / "abc123")
    code, out, err = run(capsys, ["generate", "--model", hf, *GEN])
    assert code == 0, err


@pytest.mark.parametrize("index, pattern", [
    (lambda keys: {"weight_map": ["a"]}, has(r"index\.json", r"weight_map")),
    (lambda keys: {"weight_map": {k: 5 for k in keys}}, has(r"index\.json", r"weight_map")),
    (lambda keys: {"weight_map": {k: "missing.safetensors" for k in keys}}, has(r"missing\.safetensors", r"missing")),
    (lambda keys: [], r"index\.json"),
])
def test_bad_shard_index(capsys, hf, tmp_path, index, pattern):
    split_weights(hf, index)
    refused(capsys, ["generate", "--model", hf, *GEN], pattern, keep=tmp_path)


class Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def test_pickled_weights_that_need_code(capsys, hf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (hf / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": Evil()}, hf / "pytorch_model.bin")
    line = refused(capsys, ["generate", "--model", hf, *GEN], r"pytorch_model\.bin.*(code|safetensors)", keep=tmp_path)
    assert "weights_only" not in line and not (tmp_path / "PWNED").exists()


def test_hf_folder_weights_of_the_wrong_shape(capsys, hf, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(hf / "model.safetensors"))
    sd["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(3, 3)
    save_file(sd, str(hf / "model.safetensors"))
    refused(capsys, ["generate", "--model", hf, *GEN], has(r"c_fc\.weight", r"\(3, 3\)"), keep=tmp_path)


def test_convert_from_damaged_hf_folder(capsys, hf, tmp_path):
    edit_json(hf / "config.json", lambda d: set_key(d, "n_head", 0))
    refused(capsys, ["convert", "--from-hf", hf, "--out", tmp_path / "out"], has(r"config\.json", r"n_head"), keep=tmp_path)
