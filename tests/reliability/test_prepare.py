"""`arlm prepare`: hostile inputs and output folders. Only files prepare itself wrote may be replaced."""

from __future__ import annotations

import json
import os

import pytest

from tests.reliability.conftest import refused, run, snapshot

PREPARED = {"train.bin", "val.bin", "meta.json", "tokenizer.json"}


@pytest.fixture
def text(tmp_path):
    f = tmp_path / "in" / "play.txt"
    f.parent.mkdir()
    f.write_text("To be, or not to be, that is the question.\n" * 50, encoding="utf-8")
    return f


def prepare(capsys, *argv):
    code, out, err = run(capsys, ["prepare", *argv])
    assert code == 0, err
    return code


def test_refuses_a_folder_holding_other_files(capsys, text, tmp_path):
    """A data folder with a meta.json and the user's own files: nothing of theirs is deleted."""
    out = tmp_path / "data"
    prepare(capsys, text, "--out", out)
    (out / "notes.txt").write_text("my notes")
    (out / "best").mkdir()
    (out / "best" / "model.safetensors").write_bytes(b"weights")
    refused(capsys, ["prepare", text, "--out", out], r"data.*notes\.txt|data.*best", keep=tmp_path)


def test_refuses_a_folder_of_someone_else(capsys, text, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("...")
    refused(capsys, ["prepare", text, "--out", out], r"mine", keep=tmp_path)


def test_replaces_its_own_previous_preparation(capsys, text, tmp_path):
    out = tmp_path / "data"
    prepare(capsys, text, "--out", out)
    text.write_text("Something else entirely. " * 40, encoding="utf-8")
    prepare(capsys, text, "--out", out)
    assert {p.name for p in out.iterdir()} == PREPARED
    assert json.loads((out / "meta.json").read_text())["characters"] == 25 * 40


def test_output_is_a_file(capsys, text, tmp_path):
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    refused(capsys, ["prepare", text, "--out", f], r"out\.txt.*(not a folder|is a file)", keep=tmp_path)


def test_symlinked_output_writes_into_its_target(capsys, text, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    prepare(capsys, text, "--out", link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert {p.name for p in target.iterdir()} == PREPARED
    prepare(capsys, text, "--out", link)  # again: still the same link and target
    assert link.is_symlink() and {p.name for p in target.iterdir()} == PREPARED
    assert not any(p.name.endswith(".old") for p in tmp_path.iterdir())


def test_dangling_symlinked_output(capsys, text, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "not-yet")
    prepare(capsys, text, "--out", link)
    assert link.is_symlink() and (tmp_path / "not-yet" / "meta.json").is_file()


def test_same_folder_as_the_input(capsys, tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("Words and words and words. " * 30)
    refused(capsys, ["prepare", d, "--out", d], r"corpus", keep=tmp_path)


def test_stale_temporary_folders_are_cleaned(capsys, text, tmp_path):
    """A kill -9 during the write leaves a temporary folder of a dead process; the next run removes it."""
    out = tmp_path / "data"
    stale = tmp_path / ".data.999999999.abcd.tmp"  # a pid that cannot be alive
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 1000)
    prepare(capsys, text, "--out", out)
    assert not stale.exists()


@pytest.mark.parametrize("line, pattern", [
    ('{"text": "bad \\ud800 half"}', r"docs\.jsonl.*line 2.*(surrogate|U\+D800)"),
    ('{"text": 5}', r"docs\.jsonl.*line 2.*string"),
    ("[1, 2]", r"docs\.jsonl.*line 2"),
    ("{nope", r"docs\.jsonl.*line 2.*not valid JSON"),
    ('{"body": "x"}', r"docs\.jsonl.*line 2.*'text'"),
])
def test_bad_jsonl_records(capsys, tmp_path, line, pattern):
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps({"text": "a fine first record " * 20}) + "\n" + line + "\n")
    refused(capsys, ["prepare", f, "--out", tmp_path / "o"], pattern, keep=tmp_path)


def test_surrogates_replaced_on_request(capsys, tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps({"text": "a fine first record " * 20}) + "\n" + '{"text": "bad \\ud800 half"}\n')
    prepare(capsys, f, "--out", tmp_path / "o", "--errors", "replace", "--val-fraction", "0.2")
    assert "\ufffd" in json.loads((tmp_path / "o" / "tokenizer.json").read_text())["chars"]


@pytest.mark.parametrize("flags, pattern", [
    (["--glob", "/etc/*"], r"--glob.*relative"),
    (["--glob", ""], r"--glob"),
    (["--control", "{name:>99999999999}"], r"--control"),
    (["--control", "{0}"], r"--control"),
    (["--val-fraction", "nan"], r"val-fraction.*finite"),
    (["--val-fraction", "1.5"], r"val.fraction"),
    (["--vocab-size", "99999999999", "--tokenizer", "bpe"], r"vocab.size"),
    (["--tokenizer", "wordpiece"], r"--tokenizer.*wordpiece.*char"),
])
def test_bad_options(capsys, text, tmp_path, flags, pattern):
    refused(capsys, ["prepare", text.parent, "--out", tmp_path / "o", *flags], pattern, keep=tmp_path)


def test_input_that_is_not_a_regular_file(capsys, tmp_path):
    refused(capsys, ["prepare", "/dev/null", "--out", tmp_path / "o"], r"/dev/null", keep=tmp_path)


def test_unreadable_input(capsys, text, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    text.chmod(0)
    refused(capsys, ["prepare", text, "--out", tmp_path / "o"], r"play\.txt.*(permission|Permission)")


def test_nothing_changed_by_a_refusal_in_a_prepared_folder(capsys, text, tmp_path):
    out = tmp_path / "data"
    prepare(capsys, text, "--out", out)
    before = snapshot(out)
    refused(capsys, ["prepare", tmp_path / "missing.txt", "--out", out], r"missing\.txt")
    assert snapshot(out) == before


def test_output_in_an_encoding_that_cannot_hold_the_text(text, tmp_path):
    """An ASCII or Latin-1 terminal: the summary is printed with escapes, not a UnicodeEncodeError after the work."""
    import subprocess
    import sys

    from tests.reliability.conftest import ROOT

    out = tmp_path / "données"
    r = subprocess.run([sys.executable, "-m", "arlm", "prepare", str(text), "--out", str(out)], capture_output=True,
                       timeout=240, cwd=ROOT, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"donn\\xe9es" in r.stdout and (out / "meta.json").is_file()
