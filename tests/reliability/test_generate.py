"""`arlm generate` and `arlm chat`: absurd sizes, text that cannot be encoded, broken output streams."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from tests.reliability.conftest import ROOT, refused, run

BASE = ["--prompt", "A", "--device", "cpu"]


@pytest.mark.parametrize("flags, pattern", [
    (["--max-new-tokens", "1000000000"], r"max_new_tokens.*at most"),
    (["--num-beams", "100000000", "--max-new-tokens", "4"], r"num_beams"),
    (["--num-return-sequences", "10000000"], r"(memory|GB).*num_return_sequences|num_return_sequences.*(memory|GB)"),
    (["--num-draft-tokens", "1000000000", "--draft-model", "SELF"], r"num_draft_tokens"),
    (["--top-logprobs", "1000000", "--logprobs"], r"top_logprobs"),
    (["--logit-bias", "x=1"], r"logit_bias"),
    (["--logit-bias", "1=nan"], r"logit_bias"),
    (["--temperature", "nan"], r"--temperature.*finite"),
    (["--device", "cuda:7"], r"cuda"),
    (["--precision", "int4"], r"--precision.*int4"),
    (["--min-new-tokens", "-1"], r"min_new_tokens"),
    (["--presence-penalty", "-1e38"], r"presence_penalty.*between -2 and 2"),
    (["--frequency-penalty", "1e300"], r"frequency_penalty.*between -2 and 2"),
    (["--logit-bias", "3=1e39"], r"logit_bias.*between -100 and 100"),
    (["--control", "<work=nothing>"], r"control code"),
    (["--stop-token-ids", "99999"], r"stop token id 99999.*vocabulary"),
    (["--stop-token-ids", "-3"], r"stop_token_ids"),
    (["--stop-token-ids", "x"], r"--stop-token-ids"),
    (["--num-beams", "2", "--max-new-tokens", "4", "--stop-token-ids", "99999"], r"stop token id 99999.*vocabulary"),  # checked before printing
    (["--num-beams", "2", "--max-new-tokens", "4", "--logit-bias", "99999=1"], r"logit_bias token id 99999"),
    (["--json-schema", "/nonexistent/schema.json"], r"JSON schema file not found"),
    (["--json-schema", "{not json"], r"json_schema is not valid JSON"),
    (["--json-schema", '{"type": "wat"}'], r"json_schema cannot be used"),
    (["--regex", "(a"], r"regex cannot be used: unclosed group"),
    (["--regex", "a", "--json-schema", '{"type": "object"}'], r"not both"),
    (["--num-beams", "2", "--max-new-tokens", "4", "--regex", "(a"], r"regex cannot be used"),  # checked before printing
])
def test_absurd_generate_flags(capsys, run_dir, tmp_path, flags, pattern):
    flags = [str(run_dir) if f == "SELF" else f for f in flags]
    refused(capsys, ["generate", "--model", run_dir, *BASE, *flags], pattern, keep=tmp_path)


@pytest.mark.parametrize("flags", [["--temperature", "1e-40"], ["--repetition-penalty", "1e-40"],
                                   ["--repetition-penalty", "1e300"], ["--presence-penalty=-2"], ["--logit-bias", "3=100"]])
def test_extreme_but_valid_values_decode(capsys, run_dir, flags):
    """Values that overflow float32 logits (a temperature of 1e-40 is greedy, as in vLLM; +inf logits are
    clamped) still decode: no NaN probabilities."""
    code, out, err = run(capsys, ["generate", "--model", run_dir, *BASE, "--max-new-tokens", "6", "--seed", "1", *flags])
    assert code == 0 and out.startswith("A"), err


@pytest.mark.parametrize("flag", ["--prompt", "--stop", "--bad-words", "--control"])
def test_text_that_is_not_unicode(capsys, run_dir, tmp_path, flag):
    """A lone surrogate (what Python makes of undecodable bytes in argv) is named, not a crash."""
    argv = ["generate", "--model", run_dir, "--device", "cpu", "--max-new-tokens", "3", flag, "ab\udcffc"]
    if flag != "--prompt":
        argv += ["--prompt", "A"]
    refused(capsys, argv, r"(surrogate|U\+DCFF|not valid Unicode)", keep=tmp_path)


def test_seeds_beyond_64_bits(capsys, run_dir):
    outs = []
    for seed in (7, 2**64 + 7, 2**200):
        code, out, err = run(capsys, ["generate", "--model", run_dir, *BASE, "--max-new-tokens", "12", "--seed", seed, "--json"])
        assert code == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1])["completions"])
    assert outs[0] == outs[1]


def test_stdout_that_is_full(run_dir):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "arlm", "generate", "--model", str(run_dir), *BASE, "--max-new-tokens",
                            "5"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "No space left" in r.stderr


@pytest.fixture(scope="module")
def lstm_run(char_data, tmp_path_factory):
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    out = tmp_path_factory.mktemp("lstm") / "run"
    train(tiny_train_config(char_data, out, max_steps=4, eval_interval=4, model=dict(type="lstm", n_layer=1, n_embd=32,
                                                                                     block_size=32, dropout=0.0)))
    return out


def test_lstm_compile_goes_through_the_model_contract(capsys, lstm_run):
    """--compile asks for compiled decoding; the LSTM says it has none and decodes eagerly (same tokens)."""
    argv = ["generate", "--model", lstm_run, *BASE, "--max-new-tokens", "8", "--temperature", "0", "--json"]
    code, plain, err = run(capsys, argv)
    assert code == 0, err
    code, compiled, err = run(capsys, argv + ["--compile"])
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(compiled.strip().splitlines()[-1]) == json.loads(plain.strip().splitlines()[-1])


def test_lstm_refuses_what_it_cannot_do(capsys, lstm_run, tmp_path):
    refused(capsys, ["generate", "--model", lstm_run, *BASE, "--draft-model", lstm_run], r"speculative", keep=tmp_path)
    refused(capsys, ["convert", "--to-hf", lstm_run, "--out", tmp_path / "hf"], r"LSTM", keep=tmp_path)


# -- chat --------------------------------------------------------------------------------------------


def test_chat_with_stdin_closed(run_dir):
    r = subprocess.run([sys.executable, "-c", "import os, sys; os.close(0); sys.argv = ['arlm'] + sys.argv[1:];"
                        "from arlm.cli import main; raise SystemExit(main())", "chat", "--model", str(run_dir),
                        "--device", "cpu"], capture_output=True, text=True, timeout=240, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith("cannot read standard input: Bad file descriptor")


def test_chat_keeps_going_after_a_bad_line(capsys, run_dir, tmp_path, monkeypatch):
    """Undecodable input, a /save into a folder: each says what happened on one line and the chat goes on."""
    (tmp_path / "folder").mkdir()
    lines = ["caf\udce9", f"/save {tmp_path / 'folder'}", "To be", "/exit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(x + "\n" for x in lines)))
    code, out, err = run(capsys, ["chat", "--model", run_dir, "--device", "cpu", "--max-new-tokens", "4"])
    assert code == 0 and "Traceback" not in err, err
    assert "bot>" in out and "(error:" in err and "could not save" in err


def test_chat_reads_bytes_that_are_not_utf8_in_any_locale(run_dir):
    """A strict UTF-8 stdin (a UTF-8 locale) would raise on such bytes; chat names the line and goes on."""
    code = ("import io, sys; sys.stdin = io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8', errors='strict');"
            "from arlm.cli import main; raise SystemExit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "chat", "--model", str(run_dir), "--device", "cpu", "--max-new-tokens",
                        "3"], input=b"caf\xe9\nTo be\n/exit\n", capture_output=True, timeout=240, cwd=ROOT)
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err and "not valid Unicode" in err, err
    assert b"bot>" in r.stdout


@pytest.mark.parametrize("flags, pattern", [
    (["--system", "x\ud800"], r"(surrogate|U\+D800)"),
    (["--chat-template", "{% for %}"], r"not valid Jinja"),
    (["--max-new-tokens", "1000000000"], r"max_new_tokens"),
])
def test_chat_bad_options(capsys, run_dir, tmp_path, monkeypatch, flags, pattern):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    refused(capsys, ["chat", "--model", run_dir, "--device", "cpu", *flags], pattern, keep=tmp_path)


def test_broken_pipe_is_quiet(run_dir):
    cmd = (f"{sys.executable} -m arlm generate --model {run_dir} --prompt A --device cpu --max-new-tokens 300 "
           f"--num-return-sequences 3 | head -c 1")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=240, cwd=ROOT,
                       env={**os.environ})
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
