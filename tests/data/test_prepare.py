"""arlm prepare: inputs of every kind, shard dtypes, metadata, and clear errors that lose nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arlm.config import PrepareConfig
from arlm.data.loader import TokenData, random_batch, sequential_batches
from arlm.data.prepare import prepare, token_dtype
from arlm.errors import UserError


def _prep(tmp_path, inputs, **kw):
    out = tmp_path / "out"
    meta = prepare(PrepareConfig(inputs=[str(i) for i in inputs], out=str(out), **kw))
    return out, meta


def test_folder_gives_shards_meta_and_tokenizer(char_data):
    data = TokenData.open(char_data)
    m = data.meta  # typed (arlm.io.schema.DataMeta)
    assert m.tokenizer == "char" and m.dtype == "uint16" and m.documents == 2
    assert len(data.train) == m.train_tokens and len(data.val) == m.val_tokens
    total = m.train_tokens + m.val_tokens
    assert total == m.characters + 1  # one end-of-text id between the two documents
    assert abs(m.val_tokens / total - 0.1) < 1e-3
    assert (char_data / "tokenizer.json").is_file()


def test_round_trip_of_the_token_stream(tmp_path):
    a, b = "第一篇：你好，世界！🌏\n", "Second document, with emoji 🎉."
    (tmp_path / "a.txt").write_text(a, encoding="utf-8")
    (tmp_path / "b.txt").write_text(b, encoding="utf-8")
    for kind in ("char", "bpe"):
        out, meta = _prep(tmp_path, [tmp_path / "a.txt", tmp_path / "b.txt"], tokenizer=kind, vocab_size=280,
                          val_fraction=0.2)
        from arlm.tokenizers import load_tokenizer

        tok = load_tokenizer(out)
        d = TokenData.open(out)
        ids = np.concatenate([d.train, d.val]).tolist()
        eot = ids.index(tok.eot_id)
        assert tok.decode(ids[:eot]) == a and tok.decode(ids[eot + 1:]) == b
        import shutil

        shutil.rmtree(out)


def test_literal_endoftext_in_a_document_does_not_split_it(tmp_path):
    (tmp_path / "a.txt").write_text("one document that quotes <|endoftext|> in its text " * 5, encoding="utf-8")
    out, meta = _prep(tmp_path, [tmp_path / "a.txt"], tokenizer="bpe", vocab_size=300)
    d = TokenData.open(out)
    assert meta["documents"] == 1 and meta["eot_id"] not in np.concatenate([d.train, d.val])


def test_jsonl_field_and_glob(tmp_path):
    rows = [{"text": "first record", "id": 1}, {"text": "second 记录", "id": 2}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    out, meta = _prep(tmp_path, [tmp_path / "*.jsonl"])
    assert meta["documents"] == 2 and meta["characters"] == len("first record") + len("second 记录")
    (tmp_path / "y.jsonl").write_text(json.dumps({"body": "some body text"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"y.jsonl line 1: no field 'text' \(found: body\); choose one with --jsonl-field"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "y.jsonl")], out=str(tmp_path / "o2")))
    meta = prepare(PrepareConfig(inputs=[str(tmp_path / "y.jsonl")], out=str(tmp_path / "o3"), jsonl_field="body",
                                 val_fraction=0.5))
    assert meta["characters"] == len("some body text")


def test_uint32_when_vocabulary_exceeds_uint16():
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(UserError, match="input not found"):
        _prep(tmp_path, [tmp_path / "nope.txt"])
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="corpus is empty"):
        _prep(tmp_path, [tmp_path / "empty.txt"])
    (tmp_path / "dir").mkdir()
    with pytest.raises(UserError, match="no files matching"):
        _prep(tmp_path, [tmp_path / "dir"])


def test_invalid_utf8_names_file_and_offset_or_replaces(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Café au lait, ".encode("utf-8") + "naïve".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt is not valid UTF-8: byte offset 17 .*--errors replace"):
        _prep(tmp_path, [bad])
    out, meta = _prep(tmp_path, [bad], errors="replace")
    assert meta["characters"] == len("Café au lait, na\ufffdve")


def test_a_failed_prepare_keeps_the_previous_output(tmp_path):
    (tmp_path / "good.txt").write_text("some good text " * 20, encoding="utf-8")
    out, meta = _prep(tmp_path, [tmp_path / "good.txt"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError):
        _prep(tmp_path, [tmp_path / "bad.txt"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_refuses_to_overwrite_a_folder_that_is_not_prepared_data(tmp_path):
    (tmp_path / "t.txt").write_text("text " * 10, encoding="utf-8")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds files `arlm prepare` did not write \(thesis.tex\)"):
        prepare(PrepareConfig(inputs=[str(tmp_path / "t.txt")], out=str(precious)))
    assert (precious / "thesis.tex").read_text(encoding="utf-8") == "do not delete"


def test_truncated_shard_is_detected(char_data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(char_data, copy)
    with open(copy / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="missing or truncated"):
        TokenData.open(copy)


def test_damaged_meta_is_a_clear_error(char_data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(char_data, copy)
    (copy / "meta.json").write_text('{"format": 1, "vocab', encoding="utf-8")
    with pytest.raises(UserError, match=r"meta.json: not valid JSON.*run `arlm prepare` again"):
        TokenData.open(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(UserError, match="meta.json is missing; .* is not a folder made by `arlm prepare`"):
        TokenData.open(copy)


def test_batches(char_data):
    import torch

    d = TokenData.open(char_data)
    x, y = random_batch(d.train, 3, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    ids = np.arange(50)
    batches = list(sequential_batches(ids, 16, 2))
    targets = torch.cat([b[1].flatten() for b in batches])
    assert sorted(targets[targets >= 0].tolist()) == list(range(1, 50))  # every token after the first, once


def test_too_small_for_context(char_data):
    d = TokenData.open(char_data)
    with pytest.raises(UserError, match=r"the val split has \d+ tokens, fewer than block_size \+ 1"):
        d.check_block_size(len(d.val) + 5)
