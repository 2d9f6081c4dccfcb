"""SentencePiece folders without tokenizer.json: T5's spiece.model and Marian's source.spm + target.spm +
vocab.json, converted to a tokenizers pipeline, give the ids of SentencePiece itself and of
transformers' MarianTokenizer, and damaged files are named."""

from __future__ import annotations

import json

import pytest

from arlm.errors import UserError
from arlm.tokenizers.pretrained import PretrainedTokenizer
from tests.conftest import CORPUS

spm = pytest.importorskip("sentencepiece")

TEXTS = ["To be, or not to be, that is the Question:", "  Whether 'tis Nobler   in the minde to suffer  ",
         "The Slings and Arrowes of outragious Fortune,\nOr to take Armes", "ﬁrst ＡＢＣ 1623 — “quoted”", "x",
         "Ophelia. Good my Lord, How does your Honor for this many a day?"]


def train(tmp_path, name: str, text: str, size: int, **kw) -> str:
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / name), vocab_size=size,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2, **kw)
    return str(tmp_path / f"{name}.model")


@pytest.fixture(scope="module")
def corpora():
    folio = (CORPUS.parent / "shakespeare_folio" / "hamlet.txt").read_text(encoding="utf-8")[:200_000]
    modern = (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[:200_000]
    return folio, modern


def test_t5_spiece_model_encodes_as_sentencepiece(tmp_path, corpora):
    model = train(tmp_path, "spiece", corpora[0], 600, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    d = tmp_path / "t5"
    d.mkdir()
    (d / "spiece.model").write_bytes(open(model, "rb").read())
    ours = PretrainedTokenizer.from_dir(d)
    sp = spm.SentencePieceProcessor(model_file=model)
    for text in TEXTS:
        ids = sp.encode(text)
        assert ours.encode_prompt(text) == ids + [1], text  # T5 appends </s>
        if sp.unk_id() not in ids:  # (SentencePiece shows <unk> as " ⁇ "; special tokens are not shown here)
            assert ours.decode(ids) == sp.decode(ids)
    assert ours.tok.token_to_id("<extra_id_0>") == 600 + 99 and ours.eot_id == 1


def test_marian_folder_encodes_and_decodes_as_transformers(tmp_path, corpora):
    tf = pytest.importorskip("transformers")
    src = train(tmp_path, "source", corpora[0], 500)
    tgt = train(tmp_path, "target", corpora[1], 500)
    pieces = ["</s>", "<unk>"]
    for f in (src, tgt):
        sp = spm.SentencePieceProcessor(model_file=f)
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())) if p not in pieces
                   and p not in ("<s>", "</s>", "<unk>")]
    vocab = {p: i for i, p in enumerate(pieces + [">>fra<<", "<pad>"])}
    d = tmp_path / "marian"
    d.mkdir()
    (d / "source.spm").write_bytes(open(src, "rb").read())
    (d / "target.spm").write_bytes(open(tgt, "rb").read())
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    ref = tf.MarianTokenizer(source_spm=str(d / "source.spm"), target_spm=str(d / "target.spm"), vocab=str(d / "vocab.json"))
    ours = PretrainedTokenizer.from_dir(d)
    for text in TEXTS + [">>fra<< Good night"]:
        ids = ref(text)["input_ids"]
        assert ours.encode_prompt(text) == ids, text
    target = ref(text_target=TEXTS[0])["input_ids"]
    assert ours.decode(target) == ref.decode(target, skip_special_tokens=True)
    assert ours.eot_id == vocab["</s>"]


def test_an_opus_mt_style_folder_translates_as_transformers(tmp_path, corpora):
    """A Marian folder as the hub has them (no tokenizer.json): text in, text out, as transformers."""
    tf = pytest.importorskip("transformers")
    import torch

    import arlm

    d = tmp_path / "opus"
    d.mkdir()
    for name, text in (("source", corpora[0]), ("target", corpora[1])):
        (d / f"{name}.spm").write_bytes(open(train(tmp_path, name, text, 300), "rb").read())
    pieces = ["</s>", "<unk>"]
    for name in ("source", "target"):
        sp = spm.SentencePieceProcessor(model_file=str(d / f"{name}.spm"))
        pieces += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size()))
                   if p not in pieces and p not in ("<s>", "</s>", "<unk>")]
    pieces.append("<pad>")
    (d / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}), encoding="utf-8")
    V = len(pieces)
    config = tf.MarianConfig(vocab_size=V, decoder_vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48,
                             max_position_embeddings=64, pad_token_id=V - 1, decoder_start_token_id=V - 1,
                             eos_token_id=0, forced_eos_token_id=0)
    torch.manual_seed(0)
    model = tf.MarianMTModel(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "embed_positions" not in n:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(d)
    ref = tf.MarianTokenizer(source_spm=str(d / "source.spm"), target_spm=str(d / "target.spm"), vocab=str(d / "vocab.json"))
    texts = ["Who's there?", "Long liue the King."]
    batch = ref(texts, return_tensors="pt", padding=True)
    want = ref.batch_decode(model.generate(**batch, num_beams=3, max_new_tokens=8), skip_special_tokens=True)
    lm = arlm.load(d)
    assert all(want) and lm.generate(texts, num_beams=3, max_new_tokens=8) == want  # (not empty: a real check)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "spiece.model").write_bytes(b"not a model"), "is not a SentencePiece model file"),
    (lambda d: (d / "spiece.model").write_bytes(b""), "holds no SentencePiece pieces"),
])
def test_damaged_sentencepiece_file_is_named(tmp_path, damage, message):
    damage(tmp_path)
    with pytest.raises(UserError, match=message):
        PretrainedTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize("vocab, message", [
    ("[1, 2]", "must map each piece to an id"),
    ('{"</s>": 0, "<unk>": 2}', "every id 0..N-1"),
    ('{"a": 0, "b": 1}', "has no </s> token"),
    ("{not json", "is not a JSON vocabulary"),
])
def test_damaged_marian_vocabulary_is_named(tmp_path, corpora, vocab, message):
    (tmp_path / "source.spm").write_bytes(open(train(tmp_path, "s", corpora[0], 300), "rb").read())
    (tmp_path / "target.spm").write_bytes((tmp_path / "source.spm").read_bytes())
    (tmp_path / "vocab.json").write_text(vocab, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        PretrainedTokenizer.from_dir(tmp_path)
