"""The LSTM baseline (model.type = "lstm"): its recurrent state behaves like the GPT's KV cache, it
trains in the same loop, and every verb that takes a model takes it."""

from __future__ import annotations

import json

import pytest
import torch

from arlm.config import GenerateConfig, LSTMConfig
from arlm.errors import UserError
from arlm.generate.engine import generate_ids
from arlm.generate.step import decode_step
from arlm.model import LSTMLM, build_model
from tests.conftest import tiny_train_config

CFG = dict(vocab_size=40, block_size=16, n_layer=2, n_embd=24, dropout=0.0)


def _random_lstm(**kw) -> LSTMLM:
    torch.manual_seed(0)
    m = build_model(LSTMConfig(**{**CFG, **kw})).eval()
    with torch.no_grad():  # weights large enough that greedy decoding does not repeat one token
        for p in m.parameters():
            p.normal_(0, 0.6)
    return m


def test_state_continues_exactly_like_the_full_sequence():
    m = _random_lstm()
    x = torch.randint(0, 40, (3, 12))
    with torch.no_grad():
        full, _ = m(x)
        cache = m.new_cache(3)
        pos = lambda a, b: torch.arange(a, b)[None].expand(3, -1)  # noqa: E731
        first = m(x[:, :5], cache=cache, input_pos=pos(0, 5), last_only=True)[0][:, -1]
        steps = [decode_step(m, cache, x[:, i:i + 1], pos(i, i + 1)) for i in range(5, 12)]
        again = m(x[:, :5], cache=cache, input_pos=pos(0, 5), last_only=True)[0][:, -1]  # position 0: a fresh state
    assert torch.allclose(first, full[:, 4], atol=1e-6) and torch.equal(first, again)
    for i, s in zip(range(5, 12), steps):
        assert torch.allclose(s, full[:, i], atol=1e-6)


def test_padded_batch_equals_one_by_one():
    m = _random_lstm()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    gc = GenerateConfig(max_new_tokens=10, temperature=0)
    alone = [generate_ids(m, p, gc)[0] for p in prompts]
    batch = generate_ids(m, prompts, gc)
    assert batch == alone
    assert len({tuple(a) for a in alone}) == 3 and all(len(set(a)) >= 2 for a in alone)  # not degenerate


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = build_model(LSTMConfig(**{**CFG, "n_embd": 64})).train()
    x = torch.randint(0, 40, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(300):
        _, loss = m(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # from ln(40) = 3.7


def test_trains_resumes_and_serves_every_verb(char_data, tmp_path, capsys):
    """The training loop, checkpoints and resume, arlm.load + generate + evaluate, and the CLI."""
    import arlm
    from arlm.cli import main
    from arlm.train.loop import train

    kw = dict(max_steps=12, eval_interval=4, model=dict(type="lstm", n_layer=2, n_embd=32, dropout=0.1))
    straight, split = tmp_path / "straight", tmp_path / "split"
    summary = train(tiny_train_config(char_data, straight, **kw))
    assert summary["status"] == "completed"
    train(tiny_train_config(char_data, split, **kw), callbacks=[lambda rec: rec["step"] == 6])
    train({"resume": str(split)})
    losses = lambda out: [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]  # noqa: E731
    assert losses(split) == losses(straight)
    assert json.loads((straight / "best" / "config.json").read_text())["model_type"] == "lstm"

    m = arlm.load(straight)
    assert isinstance(m.model, LSTMLM)
    text = m.generate("ROMEO:", max_new_tokens=20, temperature=0)
    assert len(text) == 20 and text == m.generate("ROMEO:", max_new_tokens=20, temperature=0)
    assert 0 < m.evaluate("To be, or not to be, that is the question.")["loss"] < 10
    assert main(["generate", "--model", str(straight), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert main(["generate", "--model", str(straight), "--prompt", "ROMEO:", "--max-new-tokens", "8",
                 "--precision", "int8"]) == 0  # the output layer quantised; the LSTM stays float
    capsys.readouterr()
    assert main(["convert", "--to-hf", str(straight), "--out", str(tmp_path / "hf")]) == 2
    assert "only GPT models export" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="speculative decoding rewinds the decoding cache, which an LSTM"):
        m.generate("ROMEO:", max_new_tokens=4, draft_model=str(straight))
