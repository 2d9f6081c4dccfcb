"""`arlm inspect`: the tables and pictures on success, every bad input refused by the contract."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import refused, run


def test_inspect_verbs(capsys, run_dir, tmp_path):
    text = ["--text", "ROMEO.\nWhat light"]
    code, out, err = run(capsys, ["inspect", "attention", "--model", run_dir, *text, "--out", tmp_path / "a.png"])
    assert code == 0, err
    assert out.startswith("attention of 2 layer(s) x 2 head(s) over 17 tokens") and (tmp_path / "a.png").stat().st_size > 5000
    code, out, err = run(capsys, ["inspect", "tokens", "--model", run_dir, *text, "--json"])
    assert code == 0, err
    rows = json.loads(out.strip().splitlines()[-1])["tokens"]
    assert len(rows) == 16 and rows[0]["token"] == "O" and len(rows[0]["top"]) == 5
    code, out, err = run(capsys, ["inspect", "lens", "--model", run_dir, *text])
    assert code == 0, err
    assert [ln.split()[0] for ln in out.splitlines()[1:5]] == ["embedding", "block", "output", "each"]
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question. " * 20)
    code, out, err = run(capsys, ["inspect", "heads", "--model", run_dir, "--data", tmp_path / "t.txt", "--out",
                                  tmp_path / "h.png"])
    assert code == 0, err
    assert out.startswith("loss ") and "layer 1" in out and (tmp_path / "h.png").is_file()


@pytest.mark.parametrize("verb, args, pattern", [
    ("attention", ["--text", "Hi"], r"no output given: add --out"),
    ("attention", ["--out", "PNG"], r"no text given: add --text"),
    ("attention", ["--text", "Hi there", "--out", "PNG", "--layer", "5"], r"--layer 5 is out of range.*2"),
    ("attention", ["--text", "Hi", "--out", "MISSING"], r"does not exist"),
    ("tokens", ["--text", "x" * 40], r"40 tokens and the model reads 32"),
    ("tokens", ["--text", "H"], r"at least 2 tokens"),
    ("tokens", ["--text", "Hi", "--top", "0"], r"--top must be between 1 and 100"),
    ("heads", [], r"no data given: add --data"),
    ("heads", ["--data", "NONE"], r"not found|No such file"),
    ("lens", ["--text", "Hi", "--threshold", "2"], r"--threshold must be a probability"),
])
def test_inspect_refusals(capsys, run_dir, tmp_path, verb, args, pattern):
    swap = {"PNG": tmp_path / "a.png", "MISSING": tmp_path / "no" / "a.png", "NONE": tmp_path / "none.txt"}
    refused(capsys, ["inspect", verb, "--model", run_dir, *[swap.get(a, a) for a in args]], pattern, keep=tmp_path)


def test_head_ablation_is_bounded(capsys, run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("arlm.cli.inspect.MAX_ABLATION_TOKENS", 100)
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question. " * 10)
    refused(capsys, ["inspect", "heads", "--model", run_dir, "--data", tmp_path / "t.txt", "--max-tokens", "0"],
            r"t.txt has 430 tokens; head ablation reads at most 100 .*: give --max-tokens", keep=tmp_path)
    refused(capsys, ["inspect", "heads", "--model", run_dir, "--data", tmp_path / "t.txt", "--max-tokens", "2000000"],
            r"--max-tokens must be between 0 \(all\) and 1,000,000", keep=tmp_path)
