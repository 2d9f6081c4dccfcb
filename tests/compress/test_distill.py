"""Distillation (arlm/compress/distill.py) through the one training loop: the objective is Hinton's
formula computed by hand, a student made of the teacher's layers is the teacher's copy, training
moves the student towards the teacher, and a distillation run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from arlm.compress.distill import distillation_loss, layer_map, student_from_teacher
from arlm.config import GPTConfig
from arlm.interop.load import load_model
from arlm.model.gpt import GPT
from arlm.train.loop import train
from tests.conftest import tiny_train_config


def test_loss_is_hintons_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    y = torch.randint(0, 7, (2, 5), generator=g)
    y[0, :2] = -1  # prompt positions without a target
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, 7), y.reshape(-1), ignore_index=-1)
    T, alpha = 2.5, 0.3
    kl, n = 0.0, 0
    for b in range(2):
        for i in range(5):
            if y[b, i] == -1:
                continue
            p = torch.softmax(t[b, i] / T, -1)
            kl += float((p * (p.log() - torch.log_softmax(s[b, i] / T, -1))).sum())
            n += 1
    want = alpha * T * T * kl / n + (1 - alpha) * float(ce)
    assert distillation_loss(s, t, y, ce, T, alpha).item() == pytest.approx(want, rel=1e-5)
    assert distillation_loss(s, s, y, ce, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(s, t, y, ce, T, 0.0).item() == pytest.approx(float(ce))


def test_student_from_the_teachers_layers():
    assert layer_map(6, 3) == [0, 2, 4] and layer_map(12, 6) == [0, 2, 4, 6, 8, 10] and layer_map(4, 4) == [0, 1, 2, 3]
    torch.manual_seed(0)
    teacher = GPT(GPTConfig(vocab_size=30, n_layer=4, n_head=2, n_embd=16, block_size=8)).eval()
    x = torch.randint(0, 30, (2, 8))
    with torch.no_grad():
        assert torch.equal(student_from_teacher(teacher, 4)(x)[0], teacher(x)[0])  # all layers: the teacher itself
    half = student_from_teacher(teacher, 2)
    assert half.config.n_layer == 2
    assert torch.equal(half.transformer.h[1].mlp.c_fc.weight, teacher.transformer.h[2].mlp.c_fc.weight)
    assert torch.equal(half.lm_head.weight, teacher.lm_head.weight)


def _kl_to(teacher, student, x) -> float:
    with torch.no_grad():
        p = torch.log_softmax(teacher(x)[0], -1)
        q = torch.log_softmax(student(x)[0], -1)
    return float(torch.nn.functional.kl_div(q.reshape(-1, q.size(-1)), p.reshape(-1, p.size(-1)), log_target=True,
                                            reduction="batchmean"))


def test_distilling_moves_the_student_towards_the_teacher(trained_model, char_data, tmp_path):
    teacher, _, _ = load_model(trained_model / "best")
    kw = dict(max_steps=12, eval_interval=12, lr=3e-3, model=dict(n_layer=1))
    plain = train(tiny_train_config(char_data, tmp_path / "plain", **kw))
    taught = train(tiny_train_config(char_data, tmp_path / "taught", teacher=str(trained_model), distill_alpha=1.0,
                                     distill_temperature=1.0, **kw))
    x = torch.randint(0, teacher.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(1))
    a = _kl_to(teacher, load_model(plain["latest"])[0], x)
    b = _kl_to(teacher, load_model(taught["latest"])[0], x)
    assert b < 0.8 * a, (a, b)
    saved = json.loads((tmp_path / "taught" / "latest" / "config.json").read_text())["train"]
    assert saved["teacher"] == str(trained_model) and saved["distill_alpha"] == 1.0


def test_distillation_resumes_exactly(trained_model, char_data, tmp_path):
    kw = dict(max_steps=10, eval_interval=5, teacher=str(trained_model), distill_alpha=0.7, model=dict(n_layer=1))
    straight = train(tiny_train_config(char_data, tmp_path / "straight", **kw))
    first = train(tiny_train_config(char_data, tmp_path / "split", **kw), callbacks=[lambda rec: rec["step"] == 4])
    assert first["step"] == 4
    train({"resume": str(tmp_path / "split")})
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for d in ("straight", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 10 and straight["status"] == "completed"
