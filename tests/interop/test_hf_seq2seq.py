"""Encoder-decoders against transformers on the same tiny random weights: T5 (1.0 and 1.1), MT5, BART,
mBART, Pegasus, Marian. Encoder outputs and logits within 1e-4, greedy and beam outputs identical
token for token (through arlm's engine and batched beam search), and what arlm refuses, by name."""

from __future__ import annotations

import json
import time

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.config import GenerateConfig
from arlm.errors import UserError
from arlm.generate.beam import beam_search_batch
from arlm.generate.engine import generate_ids
from arlm.interop.load import load_model
from tests.interop.seq2seq_models import configs, make_seq2seq, word_tokenizer

tf = pytest.importorskip("transformers")
FAMILIES = ("t5", "t5-v1.1", "mt5", "bart", "mbart", "pegasus", "marian")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name in FAMILIES:
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, make_seq2seq(tf, name, d))
    return out


def sources(V: int, lengths=(7, 4, 9), seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V - 2, (n,), generator=g).tolist() for n in lengths]


def eos_of(hf) -> int:
    eos = hf.generation_config.eos_token_id
    return eos if isinstance(eos, int) else eos[0]


def hf_tokens(hf, src: list[int], start: int, eos: int, **kw) -> list[list[int]]:
    out = hf.generate(torch.tensor([src]), do_sample=False, eos_token_id=eos, pad_token_id=hf.config.pad_token_id,
                      decoder_start_token_id=start, forced_bos_token_id=None,
                      forced_eos_token_id=kw.pop("forced_eos_token_id", None), **kw)
    rows = [r[1:] for r in out.tolist()]  # without the decoder's start token
    return [r[:r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.mark.parametrize("name", FAMILIES)
def test_encoder_and_logits_match_transformers(folders, name):
    d, hf = folders[name]
    ours, _, info = load_model(d)
    assert info.model_type == "seq2seq" and ours.config.type == "seq2seq"
    V = ours.config.vocab_size
    src = torch.randint(3, V - 2, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # a padded source
    dec = torch.randint(3, V - 2, (2, 5), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = ours.config.decoder_start_token_id
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask, decoder_input_ids=dec)
        enc = ours.encode(src, mask.bool())
        logits, _ = ours(dec, src=src, src_mask=mask.bool())
    assert (enc - ref.encoder_last_hidden_state).abs()[mask.bool()].max() <= 1e-4
    assert (logits - ref.logits).abs().max() <= 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_and_beam_outputs_match_transformers_token_for_token(folders, name):
    d, hf = folders[name]
    ours, _, _ = load_model(d)
    eos, start = eos_of(hf), ours.config.decoder_start_token_id
    srcs = sources(ours.config.vocab_size)
    for kw in (dict(num_beams=1), dict(num_beams=4),
               dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_new_tokens=5),
               dict(num_beams=3, num_return_sequences=2, early_stopping=True, repetition_penalty=1.3)):
        cfg = GenerateConfig(max_new_tokens=12, temperature=0.0, **kw)
        if cfg.num_beams == 1:
            got = [generate_ids(ours, s, cfg.sampling_params(), eos_ids=(eos,)) for s in srcs]
        else:
            got = [[h.tokens for h in hyps] for hyps in beam_search_batch(ours, [[start]] * len(srcs), cfg, (eos,),
                                                                            sources=srcs)]
        want = [hf_tokens(hf, s, start, eos, max_new_tokens=12, **kw) for s in srcs]
        assert got == want, kw


def test_forced_eos_and_forced_bos_as_transformers(folders):
    d, hf = folders["mbart"]
    ours, _, _ = load_model(d)
    eos, start = eos_of(hf), ours.config.decoder_start_token_id
    src = sources(ours.config.vocab_size, (6,))[0]
    for beams in (1, 4):
        cfg = GenerateConfig(max_new_tokens=6, temperature=0.0, num_beams=beams, forced_bos_token_id=7,
                             forced_eos_token_id=eos)
        want = hf.generate(torch.tensor([src]), max_new_tokens=6, num_beams=beams, do_sample=False, forced_bos_token_id=7,
                           forced_eos_token_id=eos, eos_token_id=eos, decoder_start_token_id=start).tolist()[0][1:]
        got = (generate_ids(ours, src, cfg.sampling_params(), eos_ids=(eos,))[0] if beams == 1 else
               beam_search_batch(ours, [[start]], cfg, (eos,), sources=[src])[0][0].tokens)
        assert got[0] == 7 and got == want[:len(got)] and got[-1] == eos


def test_untied_t5_output_layer_is_read_from_the_file(tmp_path):
    """A T5 1.1 file written by transformers 4 holds its own lm_head.weight with tie_word_embeddings=false."""
    from safetensors.torch import load_file, save_file

    hf = make_seq2seq(tf, "t5-v1.1", tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["lm_head.weight"] = torch.randn_like(sd["shared.weight"])
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(tie_word_embeddings=False)
    cfg.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = tf.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours, _, _ = load_model(tmp_path)
    assert not ours.config.tie_embeddings and not ours.config.scale_decoder_output
    src, dec = torch.tensor([[5, 6, 7, 1]]), torch.tensor([[0, 9, 10]])
    with torch.no_grad():
        assert (ours(dec, src=src)[0] - hf(input_ids=src, decoder_input_ids=dec).logits).abs().max() <= 1e-4


def test_engine_batches_sources_of_different_lengths_as_one_by_one(folders):
    d, hf = folders["marian"]
    ours, _, _ = load_model(d)
    srcs = sources(ours.config.vocab_size, (3, 11, 6, 1))
    params = GenerateConfig(max_new_tokens=8, temperature=0.0).sampling_params()
    together = generate_ids(ours, srcs, params, eos_ids=(0,))
    assert together == [generate_ids(ours, s, params, eos_ids=(0,))[0] for s in srcs]
    uncached = generate_ids(ours, srcs, params, eos_ids=(0,), use_cache=False)
    assert uncached == together  # the decoder re-run from scratch each token: the same tokens
    sampled = GenerateConfig(max_new_tokens=8, temperature=0.9, top_k=20, seed=3).sampling_params()
    assert generate_ids(ours, srcs, sampled, eos_ids=(0,)) == [generate_ids(ours, s, sampled, eos_ids=(0,))[0] for s in srcs]


def test_text_through_the_api_cli_and_server_matches_transformers(tmp_path, tmp_path_factory, capsys):
    from fastapi.testclient import TestClient

    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    torch.manual_seed(1)
    c = configs(tf)["marian"]
    c.update(dict(vocab_size=24, decoder_vocab_size=24, pad_token_id=0, decoder_start_token_id=0, eos_token_id=1,
                  forced_eos_token_id=1))
    hf = tf.MarianMTModel(c).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "embed_positions" not in n:
                p.add_(0.3 * torch.randn_like(p))
        hf.final_logits_bias[0, :2] = -2.0
    hf.save_pretrained(tmp_path)
    tok = word_tokenizer(tf, 24)
    tok.save_pretrained(tmp_path)
    hf.generation_config.num_beams, hf.generation_config.max_length = 4, 10  # Marian's own defaults, shorter
    hf.generation_config.save_pretrained(tmp_path)
    texts = ["the cat sat on the mat", "a big red dog ran to the house"]
    enc = tok(texts, return_tensors="pt", padding=True)
    want_beam = tok.batch_decode(hf.generate(**enc), skip_special_tokens=True)
    want_greedy = tok.batch_decode(hf.generate(**enc, num_beams=1, do_sample=False), skip_special_tokens=True)

    lm = arlm.load(tmp_path)
    assert lm.generation_defaults["num_beams"] == 4 and lm.generation_defaults["max_new_tokens"] == 9
    assert lm.generate(texts) == want_beam  # the file's beam search defaults
    assert lm.generate(texts, num_beams=1, temperature=0.0) == want_greedy
    assert main(["generate", "--model", str(tmp_path), "--prompt", texts[0]]) == 0
    assert capsys.readouterr().out == want_beam[0] + "\n"  # the output alone: not a continuation of the source
    out = tmp_path_factory.mktemp("eval")  # outside the model folder
    task, preds = out / "task.jsonl", out / "preds.jsonl"
    task.write_text("".join(json.dumps({"prompt": t, "reference": r}) + "\n" for t, r in zip(texts, want_beam)))
    assert main(["eval", "--model", str(tmp_path), "--task", str(task), "--metric", "exact", "--json",
                 "--max-new-tokens", "9"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["exact"] == 100.0  # the file's beams
    for flags, want in (([], want_beam), (["--num-beams", "1"], want_greedy),
                        (["--num-beams", "3", "--length-penalty", "2.0", "--early-stopping"],
                         tok.batch_decode(hf.generate(**enc, num_beams=3, length_penalty=2.0, early_stopping=True),
                                          skip_special_tokens=True))):
        assert main(["eval", "--model", str(tmp_path), "--task", str(task), "--predictions-out", str(preds),
                     "--max-new-tokens", "9", *flags]) == 0
        assert [json.loads(ln)["prediction"] for ln in preds.read_text().splitlines()] == want
    capsys.readouterr()

    with TestClient(create_app(ServeConfig(max_batch=8), lm=lm)) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).status_code != 200:  # 503 while loading; a load error says why
            assert time.monotonic() < deadline and "error" not in health.text, health.text
        m = client.get("/v1/models").json()["data"][0]["id"]
        r = client.post("/v1/completions", json={"model": m, "prompt": texts, "max_tokens": 9, "temperature": 0})
        assert r.status_code == 200 and [ch["text"] for ch in r.json()["choices"]] == want_greedy
        r = client.post("/v1/chat/completions", json={"model": m, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "encoder-decoder" in r.json()["error"]["message"]
        r = client.post("/v1/completions", json={"model": m, "prompt": "the " * 80})
        assert r.status_code == 400 and "max_source_len" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 200  # still serving


@pytest.mark.parametrize("args, message", [
    (["--prompt", "the " * 80], "this encoder reads at most 64"),
    (["--prompt", "the cat", "--num-beams", "2000000", "--max-new-tokens", "60"], "lower num_beams"),
    (["--prompt", "the cat", "--forced-eos-token-id", "9999"], "forced token id 9999 is outside the vocabulary"),
    (["--prompt", "the cat", "--forced-bos-token-id", "9999", "--num-beams", "2"], "outside the vocabulary"),
    (["--prompt", ""], "needs a source text"),
    (["--prompt", "the cat", "--echo"], "drop echo"),
    (["--prompt", "the cat", "--token-healing"], "token healing works with decoder-only models"),
    (["--prompt", "the cat", "--control", "<x>"], "drop --control"),
])
def test_generate_refuses_what_an_encoder_decoder_cannot_do(folders, tmp_path, capsys, args, message):
    d, _ = folders["marian"]
    word_tokenizer(tf, 99, pad=98, eos=0).save_pretrained(d)
    assert main(["generate", "--model", str(d), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_chat_and_perplexity_refuse_an_encoder_decoder(folders, tmp_path, capsys):
    d, _ = folders["marian"]
    word_tokenizer(tf, 99, pad=98, eos=0).save_pretrained(d)
    lm = arlm.load(d)
    with pytest.raises(UserError, match="instead of chat"):
        lm.chat_template()
    with pytest.raises(UserError, match="eval --task"):
        lm.perplexity("the cat sat")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat")
    assert main(["eval", "--model", str(d), "--data", str(text)]) == 2
    assert "eval --task" in capsys.readouterr().err


def test_beams_times_length_over_the_memory_limit_are_refused_before_decoding(folders, monkeypatch):
    import arlm.runtime

    d, _ = folders["marian"]
    word_tokenizer(tf, 99, pad=98, eos=0).save_pretrained(d)
    lm = arlm.load(d)
    from arlm.generate.beam import beam_bytes

    room = beam_bytes(lm.model, 16, 1 + 12, 2) // 2  # half what 16 beams over 2 sources need
    assert beam_bytes(lm.model, 2, 1 + 4, 1) < 0.5 * room
    monkeypatch.setattr(arlm.runtime, "available_memory", lambda device=None: room)
    with pytest.raises(UserError, match=r"beam search with num_beams=16 over 2 prompt\(s\) needs about .* lower num_beams"):
        lm.generate(["the cat sat", "a dog"], num_beams=16, max_new_tokens=12)
    assert isinstance(lm.generate("the cat sat", num_beams=2, max_new_tokens=4), str)  # a small search still fits


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(decoder_vocab_size=50), "separate source and target vocabularies"),
    (lambda c: c.update(decoder_attention_heads=2), "differs from decoder_attention_heads"),
    (lambda c: c.update(d_model="wide"), "d_model"),
    (lambda c: c.update(activation_function="mish"), "activation_function 'mish' is not supported"),
    (lambda c: c.pop("encoder_layers"), "required key 'encoder_layers' is missing"),
    (lambda c: c.update(model_type="prophetnet"), "model_type 'prophetnet' is not supported"),
    (lambda c: c.update(decoder_start_token_id=500), "outside the vocabulary"),
])
def test_damaged_or_unsupported_config_is_named(folders, tmp_path, change, message):
    import shutil

    d, _ = folders["marian"]
    shutil.copytree(d, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    change(cfg)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        load_model(tmp_path / "m")


def test_unexpected_weights_are_refused_by_name(folders, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    d, _ = folders["bart"]
    shutil.copytree(d, tmp_path / "m")
    sd = load_file(tmp_path / "m" / "model.safetensors")
    sd["model.encoder.layers.0.adapter.weight"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="unexpected weights model.encoder.layers.0.adapter.weight"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("name", FAMILIES)
def test_convert_round_trip_through_arlm_gives_transformers_the_same_model(folders, tmp_path, name, capsys):
    d, hf = folders[name]
    eos = eos_of(hf)
    word_tokenizer(tf, 99, pad=hf.config.pad_token_id, eos=eos).save_pretrained(tmp_path / "src")
    for f in d.iterdir():
        (tmp_path / "src" / f.name).write_bytes(f.read_bytes())
    assert main(["convert", "--from-hf", str(tmp_path / "src"), "--out", str(tmp_path / "arlm")]) == 0
    assert main(["export", "--model", str(tmp_path / "arlm"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    back = tf.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back) is type(hf) or name == "mt5"  # (mT5 is written as T5: the same architecture)
    src = torch.tensor([[5, 6, 7, 8, eos]])
    start = load_model(d)[0].config.decoder_start_token_id
    dec = torch.tensor([[start, 9, 10]])
    with torch.no_grad():
        want, got = hf(input_ids=src, decoder_input_ids=dec).logits, back(input_ids=src, decoder_input_ids=dec).logits
    assert (want - got).abs().max() <= 1e-5
    assert back.generation_config.decoder_start_token_id == start  # written out: transformers starts where arlm does
    kw = dict(num_beams=3, max_new_tokens=6, do_sample=False, decoder_start_token_id=start)
    assert back.generate(src, **kw).tolist() == hf.generate(src, **kw).tolist()


def test_export_refuses_what_no_format_can_hold(tmp_path, capsys):
    from arlm.config import Seq2SeqConfig
    from arlm.interop.hf_seq2seq import hf_family

    with pytest.raises(UserError, match="cannot be written as T5: norm must be rmsnorm"):
        hf_family(Seq2SeqConfig(vocab_size=10, norm="layernorm"))
    with pytest.raises(UserError, match="cannot be written as bart: it needs biases"):
        hf_family(Seq2SeqConfig(vocab_size=10, pos_embedding="learned", norm="layernorm", post_norm=True,
                                embedding_norm=True, final_norm=False, mlp="standard", norm_eps=1e-5))


def test_gguf_refuses_an_encoder_decoder_by_name(folders, tmp_path, capsys):
    d, _ = folders["marian"]
    word_tokenizer(tf, 99, pad=98, eos=0).save_pretrained(d)
    assert main(["export", "--model", str(d), "--format", "gguf", "--out", str(tmp_path / "out.gguf")]) == 2
    assert "encoder-decoder (seq2seq)" in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()


def test_onnx_export_writes_the_decoder_and_the_encoder_beside_it(folders, tmp_path, capsys):
    """Both files or neither; an existing file at either name is the user's (tests/interop/test_onnx_seq2seq.py
    checks what the graphs compute)."""
    pytest.importorskip("onnxruntime")
    d, _ = folders["bart"]
    out, enc = tmp_path / "bart.onnx", tmp_path / "bart.encoder.onnx"
    enc.write_text("my notes")
    assert main(["export", "--model", str(d), "--format", "onnx", "--out", str(out)]) == 2
    assert "bart.encoder.onnx (written beside --out" in capsys.readouterr().err
    assert enc.read_text() == "my notes" and not out.exists()
    enc.unlink()
    assert main(["export", "--model", str(d), "--format", "onnx", "--out", str(out)]) == 0
    assert "(decoder step) + " in capsys.readouterr().out and out.stat().st_size > 10_000 and enc.stat().st_size > 10_000
    before = enc.read_bytes()
    assert main(["export", "--model", str(d), "--format", "onnx", "--out", str(out)]) == 2  # exports need --overwrite
    assert "already exists" in capsys.readouterr().err and enc.read_bytes() == before
