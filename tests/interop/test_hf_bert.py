"""BERT against transformers on the same tiny random weights: BertForMaskedLM folders load with their
logits (padded batches, within 1e-4), export back to a folder transformers loads with the same logits,
and arlm.pipeline("fill-mask") gives transformers' fill-mask results; a masked-LM encoder is refused
by the verbs that continue text."""

from __future__ import annotations

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.errors import UserError
from arlm.interop.hf import export_hf
from arlm.interop.load import load_model
from tests.interop.hf_models import MIXED_TEXT

tf = pytest.importorskip("transformers")

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator([MIXED_TEXT], trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                                     show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")


def make_bert(path, seed: int = 0, tie: bool = True, **overrides):
    torch.manual_seed(seed)
    tok = wordpiece()
    cfg = tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=tie, **overrides)
    model = tf.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def batch(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("tie,act", [(True, "gelu"), (False, "gelu_new")])
def test_logits_match_transformers(tmp_path, tie, act):
    hf, tok = make_bert(tmp_path, tie=tie, hidden_act=act)
    ids, mask = batch(tok, ["Enter Hamlet, reading on a book.", "To be, or not to be", "O"])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
    model, _, info = load_model(tmp_path)
    assert info.model.type == "encoder" and info.model.tie_embeddings == tie
    with torch.no_grad():
        got = model(ids, key_mask=mask)[0]
    real = mask.bool()
    assert float((got - want)[real].abs().max()) < 1e-4
    # export: transformers reads our folder with the same logits
    lm = arlm.load(tmp_path)
    export_hf(lm.model, lm.tokenizer, tmp_path / "out", lm.info)
    again = tf.BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert float((again(input_ids=ids, attention_mask=mask).logits - want)[real].abs().max()) < 1e-4


def test_fill_mask_matches_transformers(tmp_path):
    hf, tok = make_bert(tmp_path, seed=1)
    theirs = tf.pipeline("fill-mask", model=hf, tokenizer=tok)
    ours = arlm.pipeline("fill-mask", model=tmp_path)
    for text in ["To be, or not to [MASK]: that is the question.", "[MASK] is the king."]:
        want, got = theirs(text), ours(text)
        assert [g["token"] for g in got] == [w["token"] for w in want]
        assert [g["token_str"] for g in got] == [w["token_str"] for w in want]
        assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
        assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) < 1e-4
    two = "The [MASK] and the [MASK]."
    for g_row, w_row in zip(ours(two, top_k=3), theirs(two, top_k=3)):
        assert [(g["token"], g["sequence"]) for g in g_row] == [(w["token"], w["sequence"]) for w in w_row]
    batch_out = ours(["To be, or not to [MASK].", "[MASK] is the king."])
    alone = ours("[MASK] is the king.")  # a padded batch == one text at a time
    assert [(g["token"], g["sequence"]) for g in batch_out[1]] == [(a["token"], a["sequence"]) for a in alone]
    assert max(abs(g["score"] - a["score"]) for g, a in zip(batch_out[1], alone)) < 1e-5
    targeted = ours("To be, or not to [MASK].", targets=["be", "king"])
    want = theirs("To be, or not to [MASK].", targets=["be", "king"])
    assert [g["token"] for g in targeted] == [w["token"] for w in want]


def test_masked_lm_refusals(tmp_path, capsys):
    make_bert(tmp_path)
    lm = arlm.load(tmp_path)
    with pytest.raises(UserError, match="masked-language-model encoder"):
        lm.generate("To be")
    with pytest.raises(UserError, match="masked-language-model encoder"):
        arlm.pipeline("text-generation", model=lm)
    with pytest.raises(UserError, match="no mask token"):
        arlm.pipeline("fill-mask", model=lm)("no mask here")
    for argv in (["generate", "--model", str(tmp_path), "--prompt", "To be"],
                 ["eval", "--model", str(tmp_path), "--task", str(tmp_path / "config.json")]):
        assert main(argv) == 2
        assert "error" in capsys.readouterr().err
    from tests.interop.hf_models import make_hf_model

    make_hf_model(tmp_path / "gpt", "gpt2")
    with pytest.raises(UserError, match="fill-mask predicts a masked token"):
        arlm.pipeline("fill-mask", model=tmp_path / "gpt")


def test_convert_round_trip_and_embeddings(tmp_path, capsys):
    hf, tok = make_bert(tmp_path / "hf", seed=2)
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert main(["convert", "--to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    assert "BertForMaskedLM" in capsys.readouterr().out
    ids, mask = batch(tok, ["Enter Hamlet.", "To be, or not to be"])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        back = tf.BertForMaskedLM.from_pretrained(tmp_path / "back").eval()(input_ids=ids, attention_mask=mask).logits
    assert float((back - want.logits)[mask.bool()].abs().max()) < 1e-4
    # features: the last block's output, as BertModel's last_hidden_state; pooled over the real tokens
    lm = arlm.load(tmp_path / "ours")
    states = want.hidden_states[-1]
    vectors = lm.embed(["Enter Hamlet.", "To be, or not to be"])
    for b in range(2):
        n = int(mask[b].sum())
        assert float(abs(torch.tensor(vectors[b]) - states[b, :n].mean(0)).max()) < 1e-4
    got = torch.tensor(arlm.pipeline("feature-extraction", model=lm)("To be, or not to be"))
    assert float((got[0] - states[1, :int(mask[1].sum())]).abs().max()) < 1e-4
    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    assert main(["finetune", "--model", str(tmp_path / "ours"), "--data", str(tmp_path / "sft.jsonl"),
                 "--out", str(tmp_path / "ft"), "--max-steps", "1"]) == 2
    assert "for masked-language-model training" in capsys.readouterr().err and not (tmp_path / "ft").exists()
