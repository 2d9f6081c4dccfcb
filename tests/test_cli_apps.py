"""The application verbs end to end: `arlm finetune` (full and LoRA), `arlm chat` (multi-turn,
/save, /reset, context overflow), control codes from `arlm prepare --control` to `arlm generate --control`."""

from __future__ import annotations

import io
import json

import pytest

import arlm
from arlm.cli import main
from arlm.data.sft import DEFAULT_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("chat") / "dialogue.jsonl"
    lines = [("Who is there?", "Nay, answer me."), ("Long live the king!", "Bernardo?"), ("He.", "You come most carefully.")]
    f.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}) + "\n"
                         for _ in range(6) for u, a in lines), encoding="utf-8")
    return f


def test_finetune_cli_full_and_lora(capsys, trained_model, chat_file, tmp_path):
    for extra in ([], ["--lora-rank", "4", "--lora-alpha", "8"]):
        out = tmp_path / ("lora" if extra else "full")
        code = main(["finetune", "--model", str(trained_model), "--data", str(chat_file), "--out", str(out),
                     "--max-steps", "6", "--eval-interval", "3", "--no-progress", "--device", "cpu", "--json", *extra])
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0 and summary["status"] == "completed" and summary["val_tokens"] > 0
        cfg = json.loads((out / "best" / "config.json").read_text())
        assert cfg["train"]["lr"] == (1e-3 if extra else 1e-4)  # fine-tuning defaults, LoRA's higher rate
        assert cfg["train"]["init_from"] == str(trained_model) and cfg["chat_template"] == DEFAULT_CHAT_TEMPLATE
        assert ("lora" in cfg) == bool(extra)
    assert main(["finetune", "--data", str(chat_file), "--out", str(tmp_path / "x")]) == 2
    assert "no model given" in capsys.readouterr().err


@pytest.fixture(scope="module")
def chat_model(char_data, tmp_path_factory):
    """A tiny model with room for a few turns (96 characters of context)."""
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    out = tmp_path_factory.mktemp("chatmodel") / "run"
    train(tiny_train_config(char_data, out, max_steps=4, eval_interval=4, model=dict(block_size=96)))
    return out


def run_chat(monkeypatch, capsys, model, lines, *flags):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", "--model", str(model), "--seed", "1", "--device", "cpu", *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_chat_turns_save_and_reset(monkeypatch, capsys, chat_model, tmp_path):
    saved = tmp_path / "conv.jsonl"
    code, out, err = run_chat(monkeypatch, capsys, chat_model,
                              ["Who is there?", "Long live the king!", f"/save {saved}", "/reset", f"/save {saved}.2", "/exit"],
                              "--system", "Be brief.", "--max-new-tokens", "8")
    assert code == 0 and out.count("bot> ") == 2
    conv = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
    assert conv[0]["content"] == "Be brief." and conv[3]["content"] == "Long live the king!"
    assert all(len(m["content"]) <= 8 for m in conv if m["role"] == "assistant")
    assert json.loads((tmp_path / "conv.jsonl.2").read_text())["messages"] == [{"role": "system", "content": "Be brief."}]


def test_chat_drops_old_turns_when_the_context_is_full(monkeypatch, capsys, chat_model):
    block = arlm.load(chat_model, device="cpu").block_size  # 96 characters
    code, out, err = run_chat(monkeypatch, capsys, chat_model,
                              ["Who is there?", "Nay, answer me: stand, and unfold yourself.", "a" * (block + 5), "Stand."],
                              "--max-new-tokens", "20")
    assert code == 0 and out.count("bot> ") == 3  # the over-long message is refused, the chat goes on
    assert "too long" in err and "left out" in err


def test_chat_seed_gives_each_reply_its_own_random_numbers(chat_model, monkeypatch):
    lm = arlm.load(chat_model, device="cpu")
    seeds = []
    real = lm._stream_ids

    def spy(ids, cfg):
        seeds.append(cfg.seed)
        return real(ids, cfg)

    monkeypatch.setattr(lm, "_stream_ids", spy)
    chat = arlm.api.ChatSession(lm, seed=5, max_new_tokens=4)
    for text in ("Who is there?", "Who is there?", "Stand."):
        "".join(chat.send(text))
    chat.reset()
    "".join(chat.send("Who is there?"))
    assert seeds == [5, 6, 7, 5]  # same session, same replies; a new turn, new numbers


def test_control_codes_from_prepare_to_generate(capsys, corpus_dir, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["prepare", str(corpus_dir), "--out", str(data), "--control", "<{name}>", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["controls"] == ["<hamlet>", "<sonnets>"]
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "2", "--eval-interval", "2",
                 "--block-size", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--no-progress",
                 "--no-final-eval", "--device", "cpu"]) == 0
    capsys.readouterr()
    m = arlm.load(run, device="cpu")
    ids = m.encode_prompt("", "<hamlet>")
    assert ids[0] == m.tokenizer.eot_id and m.tokenizer.decode(ids[1:]) == "<hamlet>"  # a new document opening with the code
    assert main(["generate", "--model", str(run), "--control", "<hamlet>", "--max-new-tokens", "5", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(run), "--control", "<lear>", "--max-new-tokens", "5"]) == 2
    assert "<hamlet>, <sonnets>" in capsys.readouterr().err
    assert main(["prepare", str(corpus_dir), "--out", str(tmp_path / "d2"), "--control", "<{play}>"]) == 2
    assert "no field 'play'" in capsys.readouterr().err and not (tmp_path / "d2").exists()
