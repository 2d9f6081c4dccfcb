"""Loading Hugging Face folders: weight formats, tokenizer files, generation defaults, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.errors import UserError
from arlm.interop.hf import load_hf
from arlm.tokenizers.pretrained import PretrainedTokenizer
from tests.interop.hf_models import MIXED_TEXT, bpe_tokenizer, make_hf_model

tf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    make_hf_model(d, "gpt2", seed=1)
    return d


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gpt2_vocab_and_merges_match_gpt2_tokenizer_fast(tmp_path):
    bpe_tokenizer().model.save(str(tmp_path))  # writes vocab.json + merges.txt, GPT-2's own file format
    assert {p.name for p in tmp_path.iterdir()} == {"vocab.json", "merges.txt"}
    ref = tf.GPT2TokenizerFast.from_pretrained(tmp_path)
    ours = PretrainedTokenizer.from_dir(tmp_path)
    for text in (MIXED_TEXT, "  leading spaces\n\n\ttabs 123 4567 it's we'll", "中文，English、😀 mixed"):
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ours.encode_prompt(text) == ids
        assert ours.decode(ids) == ref.decode(ids) == text
    assert ours.eot_id == ref.eos_token_id == 0


def test_prompt_gets_the_bos_token_the_tokenizer_adds(tmp_path):
    from tokenizers import processors

    tok = bpe_tokenizer()
    tok.add_special_tokens(["<s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])  # as Llama's
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>").save_pretrained(tmp_path)
    ours = PretrainedTokenizer.from_dir(tmp_path)
    ref = tf.AutoTokenizer.from_pretrained(tmp_path)
    text = "To be, or not to be"
    assert ours.encode_prompt(text) == ref(text)["input_ids"] == [bos] + ours.encode(text)
    assert ours.bos_id == bos and ours.eot_id == 0


def test_sharded_safetensors_and_pytorch_bin_load_the_same_weights(gpt2_dir, tmp_path):
    single, _, _ = load_hf(gpt2_dir)
    hf = tf.AutoModelForCausalLM.from_pretrained(gpt2_dir)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(gpt2_dir / "config.json", binary)
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    for d in (sharded, binary):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(gpt2_dir / f, d)
        assert same_weights(load_hf(d)[0], single)


class Payload:  # any class outside torch's allowlist: unpickling it would import and run our code
    pass


def test_pickle_that_needs_code_is_refused(gpt2_dir, tmp_path):
    shutil.copy(gpt2_dir / "config.json", tmp_path)
    shutil.copy(gpt2_dir / "tokenizer.json", tmp_path)
    torch.save({"wte.weight": torch.zeros(1), "payload": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="holds Python objects that need code to load"):
        load_hf(tmp_path)


def test_generation_config_defaults_apply_and_flags_override(gpt2_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(gpt2_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 12, "eos_token_id": [0, 5]}))
    m = arlm.load(d, device="cpu")
    assert m.generation_defaults == {"temperature": 0.0, "max_new_tokens": 12} and m.eos_ids == (0, 5)
    greedy = m.generate("To be")
    assert greedy == m.generate("To be", temperature=0.0, max_new_tokens=12)
    assert m.generate("To be", max_new_tokens=3, temperature=1.0, seed=0) != greedy


def test_cli_generates_and_evaluates_from_a_hugging_face_folder(gpt2_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text(MIXED_TEXT[:2000], encoding="utf-8")
    assert main(["generate", "--model", str(gpt2_dir), "--prompt", "Hamlet", "--max-new-tokens", "5", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completions"][0]
    assert main(["eval", "--model", str(gpt2_dir), "--data", str(text), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["loss"] > 0


@pytest.mark.parametrize("change,message", [
    (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "roberta", "vocab_size": 10})), "model_type 'roberta' is not supported"),
    (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10})), "'num_hidden_layers' must be a positive integer"),
    (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 20), "damaged or truncated"),
    (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer files"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "n_layer": 3})), "weight 'h.2.ln_1.weight' is missing"),
])
def test_bad_folders_give_one_clear_error(gpt2_dir, tmp_path, capsys, change, message):
    d = tmp_path / "m"
    shutil.copytree(gpt2_dir, d)
    change(d)
    assert main(["generate", "--model", str(d), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("stride", [1, 32, 50, 100, 128])
def test_sliding_window_perplexity_equals_the_guide_loop_with_transformers(gpt2_dir, stride):
    """The loop of the Hugging Face guide "Perplexity of fixed-length models", run with transformers.

    One change: each window's mean loss is weighted by the number of tokens it really scores (the
    guide subtracts one per window, which only the first window needs)."""
    hf = tf.AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    ids = torch.tensor([tf.AutoTokenizer.from_pretrained(gpt2_dir)(MIXED_TEXT)["input_ids"][:700]])
    max_length, seq_len = hf.config.n_positions, ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss.item() * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    ref = nll_sum / n_tokens

    m = arlm.load(gpt2_dir, device="cpu")
    text = m.tokenizer.decode(ids[0].tolist())
    assert m.tokenizer.encode(text) == ids[0].tolist()
    got = m.evaluate(text, batch_size=4, stride=stride)
    assert abs(got["loss"] - ref) / ref <= 1e-5
    assert got["tokens"] == seq_len
    # every token after the first is scored once, except that with stride == context the first
    # token of each window has no context and is skipped
    windows = -(-(seq_len - 1) // max_length) if stride == max_length else 1
    assert n_tokens == seq_len - windows


def test_beam_search_through_the_api_and_cli(gpt2_dir, capsys):
    m = arlm.load(gpt2_dir, device="cpu")
    beams = m.generate("Hamlet", num_beams=4, num_return_sequences=2, max_new_tokens=10, length_penalty=0.6)
    assert len(beams) == 2 and beams[0] != beams[1]
    assert m.generate("Hamlet", num_beams=4, max_new_tokens=10, length_penalty=0.6) == beams[0]
    assert main(["generate", "--model", str(gpt2_dir), "--prompt", "Hamlet", "--num-beams", "4", "--max-new-tokens",
                 "10", "--length-penalty", "0.6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completions"] == [beams[0]]
    assert main(["generate", "--model", str(gpt2_dir), "--num-beams", "2", "--max-new-tokens", "500"]) == 2
    assert "fit the context window" in capsys.readouterr().err


def test_weights_only_folder_runs_on_token_ids(tmp_path):
    hf = make_hf_model(tmp_path, "llama", seed=3, tokenizer=False, hidden_act="gelu")  # a GeGLU variant
    m = arlm.load(tmp_path, device="cpu")
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (m.model(x)[0] - hf(x).logits).abs().max().item() <= 1e-4
    with pytest.raises(UserError, match="no tokenizer files"):
        m.generate("text")
    assert main(["convert", "--from-hf", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
