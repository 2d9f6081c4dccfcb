"""`arlm eval` and `arlm convert`: outputs checked before the work starts, never one of the inputs."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import copy, refused, run


@pytest.fixture
def task(tmp_path):
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in [("To be", " or"), ("KING.", " Hi")]))
    return f


def test_predictions_out_equal_to_the_task(capsys, run_dir, task, tmp_path):
    refused(capsys, ["eval", "--model", run_dir, "--task", task, "--predictions-out", task], r"predictions-out.*task",
            keep=tmp_path)


def test_predictions_out_inside_the_model(capsys, run_dir, task, tmp_path):
    ckpt = copy(run_dir / "best", tmp_path / "ckpt")
    refused(capsys, ["eval", "--model", ckpt, "--task", task, "--predictions-out", ckpt / "config.json"],
            r"predictions-out.*model", keep=tmp_path)


def test_predictions_out_is_a_folder_refused_before_generating(capsys, run_dir, task, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("arlm.api.LanguageModel.evaluate_task", lambda *a, **k: calls.append(1))
    (tmp_path / "preds").mkdir()
    refused(capsys, ["eval", "--model", run_dir, "--task", task, "--predictions-out", tmp_path / "preds"],
            r"preds.*folder", keep=tmp_path)
    refused(capsys, ["eval", "--model", run_dir, "--task", task, "--predictions-out", tmp_path / "no" / "p.jsonl"],
            r"does not exist", keep=tmp_path)
    assert not calls


def test_predictions_written_whole(capsys, run_dir, task, tmp_path):
    code, out, err = run(capsys, ["eval", "--model", run_dir, "--task", task, "--predictions-out", tmp_path / "p.jsonl",
                                  "--max-new-tokens", "3", "--device", "cpu"])
    assert code == 0, err
    assert [json.loads(x)["reference"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == [" or", " Hi"]


@pytest.mark.parametrize("line, pattern", [
    ('{"prompt": "a\\udc80", "reference": "b"}', r"line 2.*(surrogate|U\+DC80)"),
    ('{"prompt": "a"}', r"example 2.*reference"),
    ('"just a string"', r"example 2"),
])
def test_bad_task_lines(capsys, run_dir, tmp_path, line, pattern):
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"prompt": "To", "reference": "be"}) + "\n" + line + "\n")
    refused(capsys, ["eval", "--model", run_dir, "--task", f, "--device", "cpu"], pattern, keep=tmp_path)


def test_huge_batch_is_bounded_by_the_data(capsys, run_dir, tmp_path):
    """A batch size beyond the text's windows is one batch of them all: nothing is allocated for the rest."""
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 20)
    code, out, err = run(capsys, ["eval", "--model", run_dir, "--data", text, "--device", "cpu", "--batch-size",
                                  "1000000000", "--json"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["tokens"] == len(text.read_text())


@pytest.mark.parametrize("flags, pattern", [
    (["--max-new-tokens", "1000000000"], r"max_new_tokens"),
    (["--stride", "100000"], r"stride"),
    (["--metric", "meteor"], r"--metric.*meteor"),
])
def test_bad_eval_options(capsys, run_dir, tmp_path, flags, pattern):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 20)
    refused(capsys, ["eval", "--model", run_dir, "--data", text, "--device", "cpu", *flags], pattern, keep=tmp_path)


def test_eval_text_with_surrogates_in_the_api(run_dir):
    import arlm.api

    with pytest.raises(arlm.UserError, match="surrogate|U\\+D800"):
        arlm.load(run_dir, device="cpu").evaluate("To be\ud800")


# -- convert ------------------------------------------------------------------------------------------


def test_convert_out_containing_the_source(capsys, run_dir, tmp_path):
    run_copy = copy(run_dir, tmp_path / "run")
    refused(capsys, ["convert", "--to-hf", run_copy / "best", "--out", run_copy, "--overwrite"], r"contains", keep=tmp_path)
    refused(capsys, ["convert", "--to-hf", run_copy, "--out", run_copy / "best" / "hf", "--overwrite"], r"inside",
            keep=tmp_path)
    refused(capsys, ["convert", "--to-hf", run_copy, "--out", tmp_path, "--overwrite"], r"contains", keep=tmp_path)


def test_convert_symlinked_out(capsys, run_dir, tmp_path):
    target = tmp_path / "real"
    link = tmp_path / "hf"
    link.symlink_to(target)
    for _ in range(2):
        code, out, err = run(capsys, ["convert", "--to-hf", run_dir, "--out", link, "--overwrite"])
        assert code == 0, err
    assert link.is_symlink() and (target / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".old", ".tmp"))]


def test_convert_out_is_a_file(capsys, run_dir, tmp_path):
    (tmp_path / "x").write_text("keep")
    refused(capsys, ["convert", "--to-hf", run_dir, "--out", tmp_path / "x"], r"x is a file, not a folder", keep=tmp_path)
    refused(capsys, ["convert", "--to-hf", run_dir, "--out", tmp_path / "x", "--overwrite"], r"x is a file", keep=tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("keep")
    for more in ([], ["--overwrite"]):  # a folder holding a user's file is not a model folder to replace
        refused(capsys, ["convert", "--to-hf", run_dir, "--out", tmp_path / "full", *more],
                r"full holds files `arlm convert` did not write \(a\)", keep=tmp_path)


def test_convert_source_is_not_a_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(capsys, ["convert", "--from-hf", tmp_path / "empty", "--out", tmp_path / "o"], r"empty", keep=tmp_path)
    refused(capsys, ["convert", "--to-hf", tmp_path / "empty", "--out", tmp_path / "o"], r"empty", keep=tmp_path)


def test_predictions_out_replaces_only_earlier_predictions(capsys, run_dir, task, tmp_path):
    """The output rule of every verb (arlm/io/outputs.py): an existing file is replaced when it is an earlier
    predictions file, or with --overwrite; a user's notes are not."""
    (tmp_path / "notes.jsonl").write_text('{"todo": "buy milk"}\n')
    refused(capsys, ["eval", "--model", run_dir, "--task", task, "--predictions-out", tmp_path / "notes.jsonl"],
            r"notes.jsonl exists and was not written by `arlm eval`; choose another name, or add --overwrite",
            keep=tmp_path)
    args = ["eval", "--model", run_dir, "--task", task, "--max-new-tokens", "2", "--predictions-out"]
    for more in (["--overwrite"], []):  # a user's file with --overwrite, then its own output without
        code, _, err = run(capsys, [*args, tmp_path / "notes.jsonl", *more])
        assert code == 0, err
    assert '"prediction"' in (tmp_path / "notes.jsonl").read_text()


def test_a_chat_is_saved_only_over_an_earlier_chat(run_dir, tmp_path):
    import arlm.api
    from arlm.errors import UserError

    chat = arlm.api.ChatSession(arlm.load(run_dir))
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="notes.txt exists and was not written by `arlm chat`; choose another name$"):
        chat.save(tmp_path / "notes.txt")
    chat.save(tmp_path / "c.jsonl")
    chat.save(tmp_path / "c.jsonl")  # its own: replaced
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
