"""Fine-tuning an encoder-decoder through the one training loop on source/target pairs: the batches
are what transformers' teacher forcing builds, the loss falls, resume == uninterrupted, LoRA merges,
and the result decodes; what does not apply is refused by name."""

from __future__ import annotations

import json
import math

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.data.pairs import PairData
from arlm.errors import UserError
from arlm.interop.load import load_model
from arlm.train.loop import train
from tests.interop.seq2seq_models import configs, word_tokenizer

tf = pytest.importorskip("transformers")
WORDS = "the a cat dog sat on mat ran to house big small red blue".split()


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    d = tmp_path_factory.mktemp("marian")
    c = configs(tf)["marian"]
    c.update(dict(vocab_size=24, decoder_vocab_size=24, pad_token_id=0, decoder_start_token_id=0, eos_token_id=1,
                  forced_eos_token_id=None))
    torch.manual_seed(0)
    tf.MarianMTModel(c).save_pretrained(d)
    word_tokenizer(tf, 24).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A toy task with a rule to learn: the target is the source reversed."""
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(60):
        words = [WORDS[j] for j in torch.randint(0, len(WORDS), (int(torch.randint(2, 6, (1,), generator=g)),),
                                                  generator=g)]
        key = ("source", "target") if i % 2 else ("prompt", "completion")  # both spellings
        lines.append(json.dumps({key[0]: " ".join(words), key[1]: " ".join(reversed(words))}))
    f = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f


def run(marian, pairs, out, callbacks=None, **kw):
    cfg = dict(init_from=str(marian), data=str(pairs), out=str(out), max_steps=30, batch_size=8, eval_interval=10,
               eval_batches=2, log_interval=5, warmup_steps=2, lr=3e-3, min_lr=3e-4, progress=False, device="cpu",
               final_eval=False, model={"dropout": 0.0})
    return train({**cfg, **kw}, callbacks=callbacks)


def test_batches_are_teacher_forcing_as_transformers_builds_them(marian, pairs):
    from transformers.models.marian.modeling_marian import shift_tokens_right

    model, tok, _ = load_model(marian)
    data = PairData(pairs, tok, model.config, 0.1)
    x, y = data.collate(data.train[:4])
    assert torch.equal(x.tgt, shift_tokens_right(y.clamp(min=0), 0, 0).masked_fill(y == -1, 0))
    assert torch.equal(x.src[0, :int(x.src_mask[0].sum())], torch.tensor(tok.encode_prompt(
        json.loads(pairs.read_text().splitlines()[0])["prompt"])))
    hf = tf.MarianMTModel.from_pretrained(marian).eval()
    with torch.no_grad():  # arlm's loss on the batch == transformers' with the same labels
        ours = model(x, y)[1]
        theirs = hf(input_ids=x.src, attention_mask=x.src_mask.long(), labels=y.masked_fill(y == -1, -100)).loss
    assert abs(float(ours) - float(theirs)) < 1e-4


def test_fine_tuning_learns_the_pairs_and_the_result_decodes(marian, pairs, tmp_path):
    summary = run(marian, pairs, tmp_path / "run", max_steps=60, lr=1e-2, min_lr=1e-3)
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in losses if "val_loss" in r]
    assert val[-1] < val[0] * 0.85, val  # (the loss before any step is the first)
    lm = arlm.load(tmp_path / "run")
    assert lm.seq2seq and isinstance(lm.generate("the cat sat", num_beams=2, max_new_tokens=6), str)
    assert summary["status"] == "completed"


def test_resume_equals_uninterrupted(marian, pairs, tmp_path):
    from safetensors.torch import load_file

    cfg = dict(max_steps=20, model={"dropout": 0.1})  # (dropout: the resumed run must restore the RNG too)
    run(marian, pairs, tmp_path / "whole", **cfg)
    # the same run stopped at step 10 (a callback returning True stops it), then resumed to 20
    run(marian, pairs, tmp_path / "split", **cfg, callbacks=[lambda r: r.get("step") == 10 and "val_loss" in r])
    train({"resume": str(tmp_path / "split"), "progress": False})
    a, b = (load_file(tmp_path / d / "latest" / "model.safetensors") for d in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(d):
        records = [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "final_val_loss" not in r]

    assert losses("whole") == losses("split")


def test_lora_fine_tuning_merges_into_an_encoder_decoder(marian, pairs, tmp_path, capsys):
    assert main(["finetune", "--model", str(marian), "--data", str(pairs), "--out", str(tmp_path / "lora"),
                 "--lora-rank", "4", "--max-steps", "10", "--no-progress"]) == 0
    model, _, info = load_model(tmp_path / "lora")
    assert info.lora is not None and model.config.type == "seq2seq"


def test_training_from_scratch_with_a_tokenizer_folder(marian, pairs, tmp_path):
    """No --init-from: a random encoder-decoder of the config's shape, the text encoded by --tokenizer."""
    model = {"type": "seq2seq", "n_layer": 2, "n_embd": 32, "n_head": 4, "block_size": 16, "dropout": 0.0,
             "decoder_start_token_id": 1}
    cfg = dict(data=str(pairs), out=str(tmp_path / "scratch"), tokenizer=str(marian), model=model, max_steps=80,
               batch_size=8, eval_interval=10, eval_batches=2, log_interval=5, warmup_steps=2, lr=1e-2, min_lr=1e-3,
               progress=False, device="cpu", final_eval=False)
    train(cfg)
    records = [json.loads(ln) for ln in (tmp_path / "scratch" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < math.log(24) - 0.4 and val[-1] < val[0], val  # well below a uniform guess over the 24 tokens
    lm = arlm.load(tmp_path / "scratch")
    assert lm.seq2seq and lm.model.config.vocab_size == 24 and lm.tokenizer.vocab_size == 24
    assert isinstance(lm.generate("the cat", max_new_tokens=4, temperature=0.0), str)
    with pytest.raises(UserError, match="--tokenizer is for training from scratch"):
        train({**cfg, "init_from": str(marian), "model": {}, "out": str(tmp_path / "x")})


def test_the_command_line_takes_the_encoder_decoders_shape_flags(marian, pairs, tmp_path, capsys):
    """`arlm train --type seq2seq` with the flags only an encoder-decoder has; a GPT given one is refused by
    name before anything is written."""
    from arlm.cli import main

    flags = ["train", "--data", str(pairs), "--tokenizer", str(marian), "--max-steps", "2", "--batch-size", "4",
             "--no-progress", "--no-final-eval", "--device", "cpu", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
             "--block-size", "16", "--n-decoder-layer", "2", "--max-source-len", "12", "--pos-embedding", "sinusoidal"]
    assert main([*flags, "--out", str(tmp_path / "gpt")]) == 2
    assert "'n_decoder_layer' in train config [model] does not apply to gpt models" in capsys.readouterr().err
    assert not (tmp_path / "gpt").exists()
    assert main([*flags, "--type", "seq2seq", "--out", str(tmp_path / "s2s")]) == 0
    cfg = arlm.load(tmp_path / "s2s").model.config
    assert (cfg.n_layer, cfg.decoder_layers, cfg.source_len, cfg.pos_embedding) == (1, 2, 12, "sinusoidal")


@pytest.mark.parametrize("extra, message", [
    ({"packing": True}, "--packing does not apply"),
    ({"init_from": ""}, "train one from scratch with --tokenizer DIR"),
])
def test_what_does_not_apply_is_refused(marian, pairs, tmp_path, extra, message):
    cfg = {"model": {"type": "seq2seq", "vocab_size": 24}} if extra.get("init_from") == "" else {}
    with pytest.raises(UserError, match=message):
        run(marian, pairs, tmp_path / "x", **{**cfg, **extra})


def test_a_folder_of_tokens_is_refused_for_an_encoder_decoder(marian, tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="trains on source/target pairs"):
        run(marian, tmp_path / "data", tmp_path / "x")


def test_bad_pairs_are_named(marian, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"source": "the cat", "target": "cat the"}\n{"source": "the", "target": 3}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"example 2: 'source' and 'target' must both be text"):
        run(marian, f, tmp_path / "x")


@pytest.mark.parametrize("change, message", [
    (lambda tmp, cfg: cfg.update(tokenizer=str(tmp / "nowhere")), "tokenizer.json is missing"),
    (lambda tmp, cfg: cfg.update(data=str(tmp / "missing.jsonl")), "JSONL file not found"),
])
def test_a_missing_tokenizer_or_pairs_file_is_named_and_nothing_is_written(marian, pairs, tmp_path, change, message):
    cfg = dict(data=str(pairs), out=str(tmp_path / "out"), tokenizer=str(marian), max_steps=2, progress=False,
               device="cpu", model={"type": "seq2seq", "n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16})
    change(tmp_path, cfg)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not (tmp_path / "out").exists()
