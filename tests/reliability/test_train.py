"""`arlm train`, `finetune` and `sweep` with hostile configs, data folders and output folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.reliability.conftest import copy, edit_json, has, refused, run, set_key, snapshot

FAST = ["--max-steps", "2", "--eval-interval", "1", "--eval-batches", "1", "--batch-size", "2", "--no-progress",
        "--device", "cpu", "--no-final-eval", "--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"]


def train_ok(capsys, *argv):
    code, out, err = run(capsys, ["train", *argv])
    assert code == 0, err
    return out


# -- where a run writes -----------------------------------------------------------------------------


def test_resume_writes_to_the_folder_resumed_not_the_original(capsys, char_data, tmp_path):
    original = tmp_path / "original"
    train_ok(capsys, "--data", char_data, "--out", original, *FAST)
    before = snapshot(original)
    moved = copy(original, tmp_path / "moved")
    train_ok(capsys, "--resume", moved, "--max-steps", "4", "--no-progress")
    assert snapshot(original) == before  # the original run is untouched
    assert json.loads((moved / "latest" / "config.json").read_text())["step"] == 4
    assert json.loads((moved / "latest" / "config.json").read_text())["train"]["out"] == str(moved)


def test_out_equal_to_data_is_refused(capsys, char_data, tmp_path):
    data = copy(char_data, tmp_path / "data")
    refused(capsys, ["train", "--data", data, "--out", data, *FAST], r"--out.*--data|same folder", keep=tmp_path)


def test_out_is_a_file(capsys, char_data, tmp_path):
    f = tmp_path / "run"
    f.write_text("not a folder")
    refused(capsys, ["train", "--data", char_data, "--out", f, *FAST], r"run.*(not a folder|is a file)", keep=tmp_path)


def test_symlinked_out(capsys, char_data, tmp_path):
    target = tmp_path / "disk" / "run"
    target.mkdir(parents=True)
    link = tmp_path / "run"
    link.symlink_to(target)
    train_ok(capsys, "--data", char_data, "--out", link, *FAST)
    train_ok(capsys, "--resume", link, "--max-steps", "3", "--no-progress")
    assert link.is_symlink() and (target / "latest" / "model.safetensors").is_file()
    assert not [p for p in target.iterdir() if p.name.endswith((".old", ".tmp"))]


def test_overwrite_deletes_only_the_runs_files(capsys, char_data, tmp_path):
    out = tmp_path / "run"
    train_ok(capsys, "--data", char_data, "--out", out, *FAST)
    (out / "notes.md").write_text("keep")
    train_ok(capsys, "--data", char_data, "--out", out, *FAST, "--overwrite")
    assert (out / "notes.md").read_text() == "keep"


def test_stale_temporary_checkpoints_are_cleaned(capsys, char_data, tmp_path):
    out = tmp_path / "run"
    train_ok(capsys, "--data", char_data, "--out", out, *FAST)
    for name in (".latest.999999999.x1.tmp", ".best.999999999.x2.tmp"):  # what a kill -9 mid-save leaves
        (out / name).mkdir()
        (out / name / "model.safetensors").write_bytes(b"\0" * 4096)
    # --min-delta 1000: no evaluation improves, so best/ is not rewritten (whose writer would clean its own)
    train_ok(capsys, "--resume", out, "--max-steps", "3", "--no-progress", "--min-delta", "1000")
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_weights_follow_the_umask(capsys, char_data, tmp_path):
    old = os.umask(0o022)
    try:
        train_ok(capsys, "--data", char_data, "--out", tmp_path / "run", *FAST)
    finally:
        os.umask(old)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "run" / "best").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
    assert oct((tmp_path / "run" / "best").stat().st_mode & 0o777) == "0o755"


def test_second_writer_on_the_same_run_is_refused(capsys, char_data, tmp_path):
    """The lock file of a live process refuses; the lock of a dead one is taken over."""
    out = tmp_path / "run"
    train_ok(capsys, "--data", char_data, "--out", out, *FAST)
    from arlm.io.lock import RunLock

    with RunLock(out):
        refused(capsys, ["train", "--resume", out, "--max-steps", "4", "--no-progress"],
                rf"run.*in use by process {os.getpid()}", keep=tmp_path)
        refused(capsys, ["train", "--data", char_data, "--out", out, *FAST, "--overwrite"],
                r"in use by process", keep=tmp_path)
    (out / ".lock").write_text("999999999\n")  # left by a process that died
    train_ok(capsys, "--resume", out, "--max-steps", "3", "--no-progress")


# -- configs ----------------------------------------------------------------------------------------

BAD_TOML = [
    ('sampling = "shuffle"', has(r"sampling", r"'shuffle'", r"random")),
    ('lr_schedule = "exp"', has(r"lr_schedule", r"'exp'")),
    ('dtype = "float64"', has(r"dtype", r"'float64'")),
    ('compile_mode = "fast"', has(r"compile_mode", r"'fast'")),
    ('[model]\nactivation = "swish2"', has(r"activation", r"'swish2'")),
    ('[model]\nnorm = "batchnorm"', has(r"norm", r"'batchnorm'")),
    ('[model]\ntype = "rnn"', has(r"type", r"'rnn'", r"gpt")),
    ("lr = nan", has(r"lr", r"finite")),
    ("lr = inf", has(r"lr", r"finite")),
    ("[model]\nrope_theta = nan", has(r"rope_theta", r"finite")),
    ("[model]\ndropout = -0.1", r"dropout"),
    ("[model]\nn_head = 0", has(r"n_head", r"positive")),
    ("[model]\nvocab_size = -3", r"vocab_size"),
    ("model = 5", has(r"model", r"table")),
    ("batch_size = 2.5", has(r"batch_size", r"integer")),
    ("lora_targets = \"c_attn\"", has(r"lora_targets", r"list")),
    ("lora_targets = [1, 2]", has(r"lora_targets", r"string")),
    ('preset = "gpt5"', has(r"preset", r"'gpt5'")),
    ("max_steps = 0", has(r"max_steps", r"positive")),
    ("[model]\ntype = \"lstm\"\nn_head = 4", has(r"n_head", r"lstm")),
    ('optimizer = "sgd"', has(r"optimizer", r"'sgd'", r"muon")),
    ('optimizer = "muon"\n[model]\ntype = "lstm"', has(r"optimizer muon", r"lstm", r"adamw")),
    ('optimizer = "muon"\nmuon_momentum = 1.0', has(r"muon_momentum", r"\[0, 1\)")),
    ('optimizer = "muon"\nmuon_lr = 0', has(r"muon_lr", r"> 0")),
    ("muon_weight_decay = -1", has(r"muon_weight_decay", r">= 0")),
    ("target_loss = -1.5", has(r"target_loss", r">= 0")),
    ("head_lr = 0.01", has(r"head_lr", r"tie_embeddings = false")),
    ('lr_schedule = "wsd"\nlr_decay_fraction = 0', has(r"lr_decay_fraction", r"\(0, 1\]")),
    ("embedding_lr = -0.1", has(r"embedding_lr", r">= 0")),
    ("[model]\nlogit_softcap = -5", has(r"logit_softcap", r">= 0")),
    ('[model]\nactivation = "relu3"', has(r"activation", r"'relu3'", r"relu2")),
]


@pytest.mark.parametrize("toml, pattern", BAD_TOML, ids=[t.replace("\n", " ") for t, _ in BAD_TOML])
def test_bad_toml_values(capsys, char_data, tmp_path, toml, pattern):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml + "\n")
    refused(capsys, ["train", "--config", cfg, "--data", char_data, "--out", tmp_path / "o", "--no-progress"],
            pattern, keep=tmp_path)


@pytest.mark.parametrize("flags, pattern", [
    (["--n-embd", "1000000000", "--n-head", "1"], r"(memory|GB).*n_embd|n.embd.*(memory|GB)"),
    (["--batch-size", "100000000"], r"(memory|GB).*batch|batch.*(memory|GB)"),
    (["--eval-batches", "1000000000"], r"eval.batches"),
    (["--grad-accum-steps", "1000000000"], r"grad.accum"),
    (["--vocab-size", "5"], has(r"vocab_size 5", r"smaller")),
    (["--device", "cuda:abc"], r"device"),
    (["--device", "tpu"], r"device"),
    (["--lr", "inf"], has(r"--lr", r"finite")),
    (["--max-steps", "-1"], has(r"max_steps", r"positive")),
    (["--threads", "-2"], r"threads"),
    (["--seed", "12x"], has(r"--seed", r"integer")),
    (["--optimizer", "muon", "--fsdp"], has(r"optimizer muon", r"--fsdp")),
    (["--target-loss", "nan"], has(r"--target-loss", r"finite")),
])
def test_absurd_flags(capsys, char_data, tmp_path, flags, pattern):
    refused(capsys, ["train", "--data", char_data, "--out", tmp_path / "o", *FAST, *flags], pattern, keep=tmp_path)


def test_any_integer_seed(capsys, char_data, tmp_path):
    """Seeds beyond 64 bits are reduced modulo 2**64: 2**64 + 5 trains exactly as 5."""
    losses = []
    for seed in (5, 2**64 + 5, -(2**70)):
        out = tmp_path / f"s{len(losses)}"
        train_ok(capsys, "--data", char_data, "--out", out, *FAST, "--seed", str(seed))
        losses.append([json.loads(ln).get("loss") for ln in (out / "metrics.jsonl").read_text().splitlines()])
    assert losses[0] == losses[1]


def test_resume_with_a_hand_edited_config(capsys, run_dir, tmp_path):
    run_copy = copy(run_dir, tmp_path / "run")
    edit_json(run_copy / "latest" / "config.json", lambda d: set_key(d, "train.lr", "fast"))
    refused(capsys, ["train", "--resume", run_copy, "--max-steps", "100", "--no-progress"],
            has(r"latest", r"config\.json", r"lr", r"number"), keep=tmp_path)


def test_resume_with_another_optimizer(capsys, run_dir, tmp_path):
    """The saved optimizer state belongs to the run's optimizer: switching on resume is refused by name
    (it used to fail later, on a key of the state dict), and nothing of the run changes."""
    run_copy = copy(run_dir, tmp_path / "run")
    refused(capsys, ["train", "--resume", run_copy, "--max-steps", "100", "--optimizer", "muon", "--no-progress"],
            has(r"different optimizer", r"'muon' vs 'adamw'", r"drop --optimizer"), keep=tmp_path)


def test_resume_with_damaged_metrics(capsys, char_data, tmp_path):
    out = tmp_path / "run"
    train_ok(capsys, "--data", char_data, "--out", out, *FAST)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "loss": 2.0')  # half a line: a disk that filled up
    train_ok(capsys, "--resume", out, "--max-steps", "3", "--no-progress")
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_resume_nothing(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(capsys, ["train", "--resume", tmp_path / "empty", "--no-progress"], r"nothing to resume", keep=tmp_path)
    refused(capsys, ["train", "--resume", tmp_path / "missing", "--no-progress"], r"missing", keep=tmp_path)


# -- data folders -----------------------------------------------------------------------------------

BAD_META = [
    (lambda d: set_key(d, "vocab_size", "x"), has(r"meta\.json", r"vocab_size", r"integer")),
    (lambda d: set_key(d, "dtype", "float64"), has(r"meta\.json", r"dtype", r"'float64'")),
    (lambda d: set_key(d, "train_tokens", -1), has(r"meta\.json", r"train_tokens")),
    (lambda d: set_key(d, "val_tokens", None, delete=True), has(r"meta\.json", r"'val_tokens'", r"missing")),
    (lambda d: [], has(r"meta\.json", r"object")),
    (lambda d: set_key(d, "vocab_size", 0), has(r"meta\.json", r"vocab_size")),
]


@pytest.mark.parametrize("change, pattern", BAD_META)
def test_damaged_meta(capsys, char_data, tmp_path, change, pattern):
    data = copy(char_data, tmp_path / "data")
    edit_json(data / "meta.json", change)
    refused(capsys, ["train", "--data", data, "--out", tmp_path / "o", *FAST], pattern, keep=tmp_path)


def test_token_ids_beyond_the_vocabulary(capsys, char_data, tmp_path):
    data = copy(char_data, tmp_path / "data")
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    ids = np.fromfile(data / "train.bin", dtype="<u2")
    ids[len(ids) // 2] = vocab + 7
    ids.tofile(data / "train.bin")
    refused(capsys, ["train", "--data", data, "--out", tmp_path / "o", *FAST], rf"train\.bin.*{vocab + 7}.*vocabulary",
            keep=tmp_path)


def test_data_tokenizer_missing(capsys, char_data, tmp_path):
    data = copy(char_data, tmp_path / "data")
    (data / "tokenizer.json").unlink()
    refused(capsys, ["train", "--data", data, "--out", tmp_path / "o", *FAST], has(r"tokenizer\.json", r"missing"), keep=tmp_path)


def test_data_tokenizer_disagrees_with_meta(capsys, char_data, tmp_path):
    data = copy(char_data, tmp_path / "data")
    edit_json(data / "meta.json", lambda d: set_key(d, "vocab_size", d["vocab_size"] - 3))
    refused(capsys, ["train", "--data", data, "--out", tmp_path / "o", *FAST], r"tokenizer.*meta\.json|meta\.json.*tokenizer",
            keep=tmp_path)


# -- finetune -----------------------------------------------------------------------------------------

BAD_SFT = [
    ('{"prompt": "a", "completion": "b \\ud800"}', r"line 2.*(surrogate|U\+D800)"),
    ('{"messages": "hi"}', has(r"example 2", r"messages", r"list")),
    ('{"messages": [{"role": "robot", "content": "x"}]}', has(r"example 2", r"role")),
    ('{"prompt": 1, "completion": "x"}', has(r"example 2", r"string")),
    ("not json", has(r"line 2", r"not valid JSON")),
]


@pytest.mark.parametrize("line, pattern", BAD_SFT)
def test_bad_finetune_examples(capsys, run_dir, tmp_path, line, pattern):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": "To be", "completion": " or not"}) + "\n" + line + "\n")
    refused(capsys, ["finetune", "--model", run_dir, "--data", f, "--out", tmp_path / "ft", "--no-progress"], pattern,
            keep=tmp_path)


def test_finetune_template_that_blows_up(capsys, run_dir, tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    for template, pattern in (("{{ 'a' * 10000000000 }}", r"chat template"), ("{% if %}", r"not valid Jinja"),
                              ("{{ messages.__class__.__mro__ }}", r"chat template")):
        refused(capsys, ["finetune", "--model", run_dir, "--data", f, "--out", tmp_path / "ft", "--no-progress",
                         "--chat-template", template], pattern, keep=tmp_path)


def test_finetune_config_file_is_named(capsys, run_dir, tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    (tmp_path / "ft.toml").write_text('lr_schedule = "exp"\n')
    refused(capsys, ["finetune", "--model", run_dir, "--data", f, "--out", tmp_path / "o", "--config", tmp_path / "ft.toml"],
            has(r"ft\.toml", "lr_schedule", "'exp'"), keep=tmp_path)


def test_finetune_missing_model(capsys, tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    refused(capsys, ["finetune", "--model", tmp_path / "nope", "--data", f, "--out", tmp_path / "o"], r"nope",
            keep=tmp_path)


# -- sweep ----------------------------------------------------------------------------------------------


def test_sweep_records_an_invalid_trial_and_goes_on(capsys, char_data, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("batch_size = 2\neval_batches = 1\nfinal_eval = false\ndevice = 'cpu'\n"
                   "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n")
    code, out, err = run(capsys, ["sweep", "--config", cfg, "--data", char_data, "--out", tmp_path / "sw",
                                  "--max-steps", "2", "--param", "model.activation=relu,swish2", "--json"])
    assert code == 0 and "Traceback" not in err, err
    rows = {r["model.activation"]: r for r in json.loads(out.strip().splitlines()[-1])["results"]}
    assert rows["relu"]["status"] == "completed" and rows["swish2"]["status"].startswith("error:")


@pytest.mark.parametrize("flags, pattern", [
    (["--trials", "-1", "--param", "lr=1e-3,2e-3"], r"--trials"),
    (["--param", "lr"], r"--param 'lr'"),
    (["--param", "lr=log:0:1", "--trials", "2"], r"positive"),
    (["--param", "out=x,y"], r"--param out"),
])
def test_sweep_bad_options(capsys, char_data, tmp_path, flags, pattern):
    refused(capsys, ["sweep", "--data", char_data, "--out", tmp_path / "sw", *flags], pattern, keep=tmp_path)


def test_sweep_out_is_a_file(capsys, char_data, tmp_path):
    (tmp_path / "sw").write_text("x")
    refused(capsys, ["sweep", "--data", char_data, "--out", tmp_path / "sw", "--param", "lr=1e-3"], r"sw",
            keep=tmp_path)


def test_adapters_whose_base_is_themselves(capsys, run_dir, tmp_path):
    """A hand-edited adapter-only checkpoint naming itself (or other adapters) as its base: one line, no recursion."""
    ckpt = copy(run_dir / "best", tmp_path / "ckpt")
    lora = {"rank": 2, "alpha": 4.0, "targets": ["c_attn"], "adapter_only": True, "base": str(ckpt)}
    edit_json(ckpt / "config.json", lambda d: {**d, "lora": lora})
    refused(capsys, ["generate", "--model", ckpt, "--prompt", "A", "--device", "cpu"], has("base", "LoRA"), keep=tmp_path)


def test_lora_rank_beyond_the_width(capsys, run_dir, tmp_path):
    f = tmp_path / "sft.jsonl"
    f.write_text(4 * (json.dumps({"prompt": "To be", "completion": " or not"}) + "\n"))
    refused(capsys, ["finetune", "--model", run_dir, "--data", f, "--out", tmp_path / "ft", "--lora-rank", "1000000000",
                     "--no-progress"], has("lora_rank", "n_embd"), keep=tmp_path)
