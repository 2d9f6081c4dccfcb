"""`arlm convert --from-hf / --to-hf` through the command line."""

from __future__ import annotations

import json

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.interop.load import load_model
from tests.interop.hf_models import VOCAB, make_hf_model

tf = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_from_hf_checkpoint_runs_like_the_original(kind, tmp_path, capsys):
    hf = make_hf_model(tmp_path / "hf", kind, seed=2)
    out = tmp_path / "arlm"
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == VOCAB and (out / "model.safetensors").is_file()
    model, tok, config = load_model(out)
    assert config.source["model_type"] == kind and tok.kind == "hf"
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x)[0] - hf(x).logits).abs().max().item() <= 1e-4
    a, b = arlm.load(tmp_path / "hf", device="cpu"), arlm.load(out, device="cpu")
    assert a.generate("Hamlet", temperature=0.0, max_new_tokens=20) == b.generate("Hamlet", temperature=0.0, max_new_tokens=20)


def test_trained_model_to_hf_loads_in_transformers(trained_model, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(trained_model), "--out", str(out)]) == 0
    assert "GPT-2 layout" in capsys.readouterr().out
    hf = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = tf.AutoTokenizer.from_pretrained(out)
    m = arlm.load(trained_model, device="cpu")
    text = "KING. My lord, the queen"
    ids = m.tokenizer.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - m.model(torch.tensor([ids]))[0]).abs().max().item() <= 1e-5
    # transformers' own greedy decoding continues the text as arlm does
    new = m.model.config.block_size - len(ids)  # within the context window (arlm slides it, transformers stops)
    ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    assert hf_tok.decode(ref[0, len(ids):]) == m.generate(text, temperature=0.0, max_new_tokens=new)


def test_convert_refuses_to_overwrite_and_needs_one_direction(trained_model, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for more in ([], ["--overwrite"]):  # a user's file in the folder: never replaced
        assert main(["convert", "--to-hf", str(trained_model), "--out", str(out), *more]) == 2
        assert "did not write (keep.txt)" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(["convert", "--out", str(out)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    (out / "keep.txt").unlink()
    assert main(["convert", "--to-hf", str(trained_model), "--out", str(out)]) == 0
    assert main(["convert", "--to-hf", str(trained_model), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "--to-hf", str(trained_model), "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file()


def test_generation_defaults_survive_hf_to_arlm_to_hf(tmp_path):
    make_hf_model(tmp_path / "hf", "llama", seed=4)
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "max_new_tokens": 12, "repetition_penalty": 1.1, "eos_token_id": [0, 7]}))
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "a")]) == 0
    assert main(["convert", "--to-hf", str(tmp_path / "a"), "--out", str(tmp_path / "back")]) == 0
    gen = tf.GenerationConfig.from_pretrained(tmp_path / "back")
    assert (gen.do_sample, gen.max_new_tokens, gen.repetition_penalty, gen.eos_token_id) == (False, 12, 1.1, [0, 7])
    assert gen.temperature in (None, 1.0)  # greedy: no temperature written
