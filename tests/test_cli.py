"""The command line: every verb end to end, --json output, help for every flag, and the bad-input
contract: one line on stderr, exit status 2, no traceback, nothing lost."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from arlm.cli import build_parser, main
from arlm.config import GenerateConfig, GPTConfig, TrainConfig


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(capsys, argv, pattern):
    import re

    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("arlm ")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), err


def test_prepare_train_eval_generate_json(capsys, corpus_dir, tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "prepare", corpus_dir, "--out", data, "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["tokenizer"] == "char"
    cfg = tmp_path / "c.toml"
    cfg.write_text('max_steps = 6\neval_interval = 3\neval_batches = 1\nbatch_size = 4\n'
                   'lr = 3e-3\nwarmup_steps = 1\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n')
    code, stdout, _ = run_cli(capsys, "train", "--config", cfg, "--data", data, "--out", out, "--max-steps", 8,
                              "--no-progress", "--json")
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and summary["step"] == 8 and summary["val_loss"] > 0  # the flag overrode the TOML
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["model"]["n_embd"] == 16 and saved["train"]["lr"] == 3e-3
    code, stdout, _ = run_cli(capsys, "eval", "--model", out, "--data", corpus_dir / "hamlet.txt", "--json")
    r = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and {"loss", "perplexity", "bits_per_char", "bits_per_byte"} <= set(r)
    code, stdout, _ = run_cli(capsys, "generate", "--model", out, "--prompt", "To", "--max-new-tokens", 12,
                              "--seed", 1, "--num-return-sequences", 2, "--json")
    g = json.loads(stdout.strip().splitlines()[-1])
    assert code == 0 and len(g["completions"]) == 2
    code, stdout, _ = run_cli(capsys, "generate", "--model", out, "--prompt", "To", "--max-new-tokens", 12,
                              "--temperature", 0)
    assert code == 0 and stdout.startswith("To") and len(stdout) <= len("To") + 12 + 1
    # Resume with a longer schedule continues from step 8.
    code, stdout, _ = run_cli(capsys, "train", "--resume", out, "--max-steps", 10, "--no-progress", "--json")
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["step"] == 10


def test_every_config_field_has_a_documented_flag():
    parser = build_parser()
    sub = {a.dest: a for a in parser._subparsers._group_actions[0].choices["train"]._actions}
    for cls, prefix in ((TrainConfig, ""), (GPTConfig, "model.")):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name == "model":
                continue
            action = sub[prefix + f.name]
            assert action.help and len(action.help) > 10, f.name
    gen = {a.dest for a in parser._subparsers._group_actions[0].choices["generate"]._actions}
    assert {f.name for f in dataclasses.fields(GenerateConfig)} <= gen


def test_help_mentions_each_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("prepare", "train", "generate", "eval"):
        assert verb in out
    for verb in ("prepare", "train", "generate", "eval"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        assert "--json" in capsys.readouterr().out


# -- bad input -------------------------------------------------------------------------------------


def test_missing_and_empty_corpus(capsys, tmp_path):
    assert_user_error(capsys, ["prepare", tmp_path / "missing.txt", "--out", tmp_path / "o"], "input not found")
    (tmp_path / "e.txt").write_text("")
    assert_user_error(capsys, ["prepare", tmp_path / "e.txt", "--out", tmp_path / "o"], "corpus is empty")
    assert not (tmp_path / "o").exists()


def test_invalid_utf8(capsys, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok text\n\xe9t\xe9")
    assert_user_error(capsys, ["prepare", tmp_path / "bad.txt", "--out", tmp_path / "o"],
                      r"bad.txt is not valid UTF-8: byte offset 8")
    code, _, _ = run_cli(capsys, "prepare", tmp_path / "bad.txt", "--out", tmp_path / "o", "--errors", "replace",
                         "--val-fraction", "0.3")
    assert code == 0


def test_corpus_too_small_for_context(capsys, char_data, tmp_path):
    assert_user_error(capsys, ["train", "--data", char_data, "--out", tmp_path / "o", "--block-size", 100000,
                               "--no-progress"], r"fewer than block_size \+ 1 = 100001.*smaller --block-size")


def test_unknown_config_key_and_wrong_type(capsys, char_data, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_step = 10\n")
    assert_user_error(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o"],
                      r"unknown config key 'max_step' in .*c.toml; did you mean 'max_steps'\?")
    cfg.write_text("zzzz = 1\n")
    assert_user_error(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o"],
                      r"unknown config key 'zzzz' in .*c.toml; valid keys are: .*max_steps")
    cfg.write_text('lr = "fast"\n')
    assert_user_error(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o"],
                      r"config key 'lr' .* must be a number, got str 'fast'")
    cfg.write_text("[model]\nn_head = 2.5\n")
    assert_user_error(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o"],
                      r"config key 'n_head' .* must be an integer")
    cfg.write_text("this is = not toml ]")
    assert_user_error(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o"],
                      "is not valid TOML")
    # A flag of the wrong type is argparse's exit 2 with a usage line.
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(char_data), "--out", str(tmp_path / "o"), "--lr", "fast"])
    assert e.value.code == 2 and "--lr must be a number, got 'fast'" in capsys.readouterr().err


def test_prompt_outside_vocabulary(capsys, trained_model):
    assert_user_error(capsys, ["generate", "--model", trained_model, "--prompt", "Grüße 🎭"],
                      r"outside this character-level vocabulary: .*U\+00FC.*--tokenizer bpe")
    main(["generate", "--model", str(trained_model), "--prompt", "Grüße 🎭"])
    assert capsys.readouterr().out == ""  # nothing printed before the error, not even the prompt


@pytest.mark.parametrize("flags, pattern", [
    (["--temperature", "-0.5"], "temperature must be >= 0"),
    (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
    (["--top-p", "1.01"], r"top_p must be in \(0, 1\]"),
    (["--top-k", "-1"], "top_k must be >= 0"),
    (["--max-new-tokens", "-5"], "max_new_tokens must be between 0 and"),
])
def test_bad_decoding_controls(capsys, trained_model, flags, pattern):
    assert_user_error(capsys, ["generate", "--model", trained_model, "--prompt", "A", *flags], pattern)


def test_missing_or_truncated_checkpoint(capsys, trained_model, tmp_path):
    import shutil

    assert_user_error(capsys, ["generate", "--model", tmp_path / "nope", "--prompt", "A"], "model folder not found")
    shutil.copytree(trained_model / "best", tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert_user_error(capsys, ["eval", "--model", tmp_path / "ck", "--data", __file__], "damaged or truncated")
    (tmp_path / "ck" / "config.json").unlink()
    assert_user_error(capsys, ["generate", "--model", tmp_path / "ck", "--prompt", "A"], "config.json is missing")


def test_resume_with_incompatible_config(capsys, trained_model):
    assert_user_error(capsys, ["train", "--resume", trained_model, "--max-steps", 99, "--n-embd", 64],
                      r"cannot resume with a different model: n_embd is 32 .* but 64 was given")


def test_entry_point_exit_code_and_no_traceback(tmp_path):
    """The installed `python -m arlm` process itself: status 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "arlm", "prepare", str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"arlm prepare: error: input not found: {tmp_path / 'none.txt'}"
