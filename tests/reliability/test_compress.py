"""`arlm compress quantize`: the table on success, and every bad input refused by the contract (one line,
exit 2, nothing written or changed) before any work."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import copy, refused, run


def test_quantize_writes_a_checkpoint_and_its_table(capsys, run_dir, char_data, tmp_path):
    code, out, err = run(capsys, ["compress", "quantize", "--model", run_dir, "--out", tmp_path / "q4", "--data",
                                  char_data, "--eval-tokens", "2000", "--decode-tokens", "8"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("quantized 9 layers and the embedding (int4, groups of 32, symmetric) ->")
    assert lines[1].startswith("| model | weights file | parameters | decode tok/s, batch 1 | batch 8 | val loss |")
    rows = [ln.split("|")[1].strip() for ln in lines[3:]]
    assert rows == ["float32 (original)", "PyTorch dynamic int8 (not saved)", "int4, groups of 32, symmetric"]
    code, out, err = run(capsys, ["compress", "quantize", "--model", run_dir, "--out", tmp_path / "q8", "--method", "int8",
                                  "--data", char_data, "--eval-tokens", "2000", "--decode-tokens", "0", "--no-baseline",
                                  "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    original, q8 = result["rows"]
    assert result["method"] == {"method": "int8", "group_size": 0, "symmetric": True}
    assert q8["file_bytes"] < 0.45 * original["file_bytes"]  # a tiny model: norms and positions stay float32
    assert abs(q8["perplexity"] / original["perplexity"] - 1) < 0.01
    assert q8["params"] == original["params"] and q8["tokens_per_s_1"] is None
    # every verb loads the result as it is
    code, out, err = run(capsys, ["generate", "--model", tmp_path / "q4", "--prompt", "To", "--max-new-tokens", "5",
                                  "--temperature", "0", "--json"])
    assert code == 0, err
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.")
    code, out, err = run(capsys, ["eval", "--model", tmp_path / "q8", "--data", tmp_path / "t.txt", "--json"])
    assert code == 0, err
    refused(capsys, ["generate", "--model", tmp_path / "q4", "--prompt", "To", "--precision", "int8"],
            r"already quantized.*without --precision int8")


@pytest.mark.parametrize("args, pattern", [
    (["--method", "int3"], r"--method.*invalid choice.*int3"),
    (["--group-size", "48"], r"--group-size.*invalid choice.*48"),
    (["--group-size", "64"], r"32 inputs, not a multiple of the int4 group size 64.*--group-size"),
    (["--method", "int8", "--asymmetric"], r"--asymmetric is an int4 option"),
    (["--eval-tokens", "-1"], r"--eval-tokens must be >= 0"),
    (["--decode-tokens", "99999"], r"--decode-tokens must be between 0 and 4096"),
    (["--data", "NOPE"], r"--data .*nope not found"),
])
def test_bad_flags(capsys, run_dir, tmp_path, args, pattern):
    argv = ["compress", "quantize", "--model", run_dir, "--out", tmp_path / "q", *args]
    refused(capsys, [a if a != "NOPE" else tmp_path / "nope" for a in argv], pattern, keep=tmp_path)
    assert not (tmp_path / "q").exists()


def test_outputs_checked_before_work(capsys, run_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("arlm.train.compress.quantize_model", lambda *a: calls.append(1))
    model = copy(run_dir / "best", tmp_path / "m")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    for more in ([], ["--overwrite"]):  # a folder holding a user's file is never replaced
        refused(capsys, ["compress", "quantize", "--model", model, "--out", tmp_path / "taken", *more],
                r"holds files `arlm compress quantize` did not write \(keep.txt\)", keep=tmp_path)
    copy(model, tmp_path / "earlier")
    refused(capsys, ["compress", "quantize", "--model", model, "--out", tmp_path / "earlier"],
            r"already exists.*--overwrite", keep=tmp_path)
    refused(capsys, ["compress", "quantize", "--model", model, "--out", model], r"--out", keep=tmp_path)
    refused(capsys, ["compress", "quantize", "--model", model, "--out", model / "inside"], r"--out", keep=tmp_path)
    refused(capsys, ["compress", "quantize", "--model", tmp_path / "none", "--out", tmp_path / "o"], r"not found",
            keep=tmp_path)
    refused(capsys, ["compress", "quantize", "--model", model], r"no output folder.*--out", keep=tmp_path)
    assert not calls


def test_foreign_data_and_quantized_input(capsys, run_dir, tmp_path, corpus_dir):
    from arlm.config import PrepareConfig
    from arlm.data.prepare import prepare

    other = tmp_path / "bpe"
    prepare(PrepareConfig(inputs=[str(corpus_dir)], out=str(other), tokenizer="bpe", vocab_size=300))
    refused(capsys, ["compress", "quantize", "--model", run_dir, "--out", tmp_path / "q", "--data", other],
            r"not prepared with this model's tokenizer", keep=tmp_path)
    code, _, err = run(capsys, ["compress", "quantize", "--model", run_dir, "--out", tmp_path / "q", "--decode-tokens", "0",
                                "--no-baseline"])
    assert code == 0, err
    refused(capsys, ["compress", "quantize", "--model", tmp_path / "q", "--out", tmp_path / "qq"],
            r"already quantized \(int4.*float model", keep=tmp_path)


def test_lstm_refused(capsys, char_data, tmp_path):
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    train(tiny_train_config(char_data, tmp_path / "lstm", max_steps=2, model={"type": "lstm"}))
    capsys.readouterr()  # training's log
    refused(capsys, ["compress", "quantize", "--model", tmp_path / "lstm", "--out", tmp_path / "q"], r"GPT models.*LSTM",
            keep=tmp_path)


def test_prune_writes_a_smaller_checkpoint_and_its_table(capsys, run_dir, char_data, tmp_path):
    code, out, err = run(capsys, ["compress", "prune", "--model", run_dir, "--out", tmp_path / "p", "--method", "heads",
                                  "--amount", "0.5", "--data", char_data, "--calibration-batches", "2", "--eval-tokens",
                                  "1000", "--decode-tokens", "4", "--recover-steps", "3", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    original, before, after = result["rows"]
    assert before["name"].endswith("before recovery") and after["name"].endswith("+ 3 recovery steps")
    assert after["params"] < original["params"] and after["file_bytes"] < original["file_bytes"]
    assert json.loads((tmp_path / "p" / "config.json").read_text())["model"]["n_head"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the recovery's scratch folder is gone
    code, out, err = run(capsys, ["compress", "prune", "--model", run_dir, "--out", tmp_path / "m", "--amount", "0.5",
                                  "--decode-tokens", "0"])
    assert code == 0, err
    assert "50.0% zeros" in out.splitlines()[0] and "| nonzero |" in out
    code, out, err = run(capsys, ["generate", "--model", tmp_path / "p", "--prompt", "To", "--max-new-tokens", "3"])
    assert code == 0, err


@pytest.mark.parametrize("args, pattern", [
    (["--amount", "0"], r"--amount must be a fraction between 0 and 1"),
    (["--amount", "1.5"], r"--amount must be a fraction between 0 and 1"),
    (["--method", "random"], r"--method.*invalid choice"),
    (["--method", "wanda"], r"--method wanda: add --data DIR"),
    (["--recover-steps", "5"], r"with --recover-steps: add --data DIR"),
    (["--method", "heads", "--data", "TEXT"], r"needs a prepared data folder.*not a folder"),
    (["--method", "heads", "--amount", "0.1", "--data", "DATA"], r"removes no attention head.*at least 0.25"),
    (["--method", "neurons", "--amount", "0.999", "--data", "DATA"], r"every MLP unit"),
    (["--recover-lr", "0"], r"--recover-lr must be between 0 and 1"),
    (["--calibration-batches", "0"], r"--calibration-batches must be between 1 and 10000"),
])
def test_prune_bad_flags(capsys, run_dir, char_data, tmp_path, args, pattern):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be")
    args = [{"TEXT": text, "DATA": char_data}.get(a, a) for a in args]
    refused(capsys, ["compress", "prune", "--model", run_dir, "--out", tmp_path / "p", *args], pattern, keep=tmp_path)
    assert not (tmp_path / "p").exists()


def test_distill_trains_a_student_run(capsys, run_dir, char_data, tmp_path):
    code, out, err = run(capsys, ["compress", "distill", "--teacher", run_dir, "--data", char_data, "--out", tmp_path / "s",
                                  "--max-steps", "4", "--eval-interval", "2", "--eval-batches", "1", "--batch-size", "2",
                                  "--decode-tokens", "0", "--eval-tokens", "500", "--no-progress", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    teacher, student, scratch = result["rows"]
    assert result["init"] == "teacher-layers" and student["params"] < teacher["params"]
    assert scratch["name"].startswith("same student from scratch")
    cfg = json.loads((tmp_path / "s" / "best" / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["train"]["teacher"] == str(run_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the scratch baseline and the start are gone


def test_distill_baseline_trains_without_the_teacher(capsys, run_dir, char_data, tmp_path, monkeypatch):
    import arlm.train.compress as workflows

    runs = []
    real = workflows.train
    monkeypatch.setattr(workflows, "train", lambda cfg: runs.append(dict(cfg)) or real(cfg))
    code, _, err = run(capsys, ["compress", "distill", "--teacher", run_dir, "--data", char_data, "--out", tmp_path / "s",
                                "--max-steps", "2", "--eval-interval", "2", "--eval-batches", "1", "--batch-size", "2",
                                "--decode-tokens", "0", "--eval-tokens", "200", "--no-progress"])
    assert code == 0, err
    student, scratch = runs
    assert student["teacher"] == str(run_dir) and "init_from" in student
    assert "teacher" not in scratch and "init_from" not in scratch and scratch["max_steps"] == 2


@pytest.mark.parametrize("args, pattern", [
    ([], r"no teacher given: add --teacher"),
    (["--teacher", "RUN", "--init", "teacher-layers", "--n-embd", "16"], r"teacher-layers copies the teacher's blocks"),
    (["--teacher", "RUN", "--student-config", "TOML"], r"teacher, init_from and resume are set by"),
    (["--teacher", "RUN", "--data", "BPE"], r"not prepared with this model's tokenizer"),
    (["--teacher", "RUN", "--distill-alpha", "2"], r"distill_alpha must be between 0 and 1"),
    (["--teacher", "RUN", "--block-size", "64"], r"teacher .* reads 32 positions.*--block-size 32"),
    (["--teacher", "RUN", "--out", "RUN"], r"--out"),
])
def test_distill_refusals(capsys, run_dir, char_data, corpus_dir, tmp_path, args, pattern):
    from arlm.config import PrepareConfig
    from arlm.data.prepare import prepare

    toml = tmp_path / "student.toml"
    toml.write_text(f'teacher = "{run_dir}"\n[model]\nn_layer = 1\n')
    bpe = tmp_path / "bpe"
    if "BPE" in args:
        prepare(PrepareConfig(inputs=[str(corpus_dir)], out=str(bpe), tokenizer="bpe", vocab_size=300))
    argv = ["compress", "distill", "--data", char_data, "--out", tmp_path / "s", "--max-steps", "2", "--no-baseline", *args]
    swap = {"RUN": run_dir, "TOML": toml, "BPE": bpe}
    # a later --data / --out replaces the first one
    refused(capsys, [swap.get(a, a) if isinstance(a, str) else a for a in argv], pattern, keep=tmp_path)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--teacher", "NONE"], r"not found"),
    (["--keep-zeros", "--lora-rank", "2", "--init-from", "RUN"], r"--keep-zeros .*not with --fsdp or --lora-rank"),
    (["--teacher", "RUN", "--block-size", "64"], r"teacher .* reads 32 positions"),
])
def test_train_flags_of_compression_refused(capsys, run_dir, char_data, tmp_path, args, pattern):
    swap = {"NONE": tmp_path / "none", "RUN": run_dir}
    argv = ["train", "--data", char_data, "--out", tmp_path / "o", "--max-steps", "1", "--no-progress",
            *[swap.get(a, a) for a in args]]
    refused(capsys, argv, pattern, keep=tmp_path)
    assert not (tmp_path / "o").exists()


def test_quantized_models_do_not_export_to_hugging_face(capsys, quantized_dir, tmp_path):
    """transformers has no layout for arlm's packed int4/int8 weights: refused by name (was a KeyError)."""
    for argv in (["export", "--format", "hf", "--model", quantized_dir], ["convert", "--to-hf", quantized_dir]):
        refused(capsys, [*argv, "--out", tmp_path / "hf"],
                r"is quantized \(int4.*\); a Hugging Face folder holds a float model", keep=tmp_path)


def test_distill_an_lstm_teacher(capsys, char_data, tmp_path):
    """The teacher's layers are a GPT's to copy: with an LSTM teacher, auto starts the student at random (was an
    AttributeError), and --init teacher-layers is refused by name."""
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config
    from tests.reliability.conftest import quiet

    with quiet():
        train(tiny_train_config(char_data, tmp_path / "lstm", max_steps=2, model={"type": "lstm", "n_layer": 2}))
    base = ["compress", "distill", "--teacher", tmp_path / "lstm", "--data", char_data, "--max-steps", "2",
            "--eval-batches", "1", "--no-progress", "--no-baseline", "--decode-tokens", "0"]
    refused(capsys, [*base, "--out", tmp_path / "s1", "--init", "teacher-layers"],
            r"--init teacher-layers copies a GPT's blocks; this teacher is an lstm model: use --init random",
            keep=tmp_path)
    code, out, err = run(capsys, [*base, "--out", tmp_path / "s2"])
    assert code == 0, err
    assert "random-initialised student" in out and (tmp_path / "s2" / "best" / "config.json").is_file()
