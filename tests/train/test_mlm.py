"""Masked-language-model fine-tuning of a BERT folder through the one loop: BERT's masking rule, masks
that depend only on the batch and the seed (resume == uninterrupted), a loss that falls, and a result
that transformers loads and arlm fills masks with."""

from __future__ import annotations

import json

import pytest
import torch

import arlm
from arlm.cli import main
from arlm.data.mlm import MLMData, mask_tokens
from arlm.errors import UserError
from arlm.train.loop import train
from tests.conftest import CORPUS

tf = pytest.importorskip("transformers")


def bert_folder(path):
    from tests.interop.test_hf_bert import make_bert

    make_bert(path, seed=3)


def test_masking_follows_bert():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, 300, (64, 64), generator=g)
    x[:, 0], x[:, -1] = 2, 3  # [CLS] ... [SEP]
    inputs, targets = mask_tokens(x, {0, 2, 3, 4}, 4, 300, seed=7)
    chosen = targets != -1
    assert 0.13 < chosen.float().mean() < 0.17  # 15%
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # special tokens are never chosen
    assert torch.equal(targets[chosen], x[chosen]) and torch.equal(inputs[~chosen], x[~chosen])
    masked = (inputs == 4) & chosen
    kept = (inputs == x) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85 and 0.05 < kept.sum() / chosen.sum() < 0.15
    again = mask_tokens(x, {0, 2, 3, 4}, 4, 300, seed=7)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)  # a function of the batch and seed
    assert not torch.equal(mask_tokens(x, {0, 2, 3, 4}, 4, 300, seed=8)[1], targets)


def test_finetune_lowers_the_loss_and_resumes(tmp_path, capsys):
    bert_folder(tmp_path / "bert")
    text = (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[:30_000]
    (tmp_path / "hamlet.txt").write_text(text, encoding="utf-8")
    base = ["finetune", "--model", str(tmp_path / "bert"), "--data", str(tmp_path / "hamlet.txt"), "--batch-size", "8",
            "--lr", "1e-3", "--eval-interval", "20", "--eval-batches", "4", "--val-fraction", "0.1", "--json"]
    assert main(base + ["--out", str(tmp_path / "ft"), "--max-steps", "40"]) == 0
    capsys.readouterr()
    metrics = [json.loads(l) for l in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert vals[-1] < vals[0] - 0.05, vals  # (5.89 -> 5.71 nats when written)
    # resume == uninterrupted: the same run stopped at step 20 (a callback returning True stops it), resumed to 40
    cfg = dict(init_from=str(tmp_path / "bert"), data=str(tmp_path / "hamlet.txt"), batch_size=8, lr=1e-3, eval_interval=20,
               eval_batches=4, val_fraction=0.1, max_steps=40, progress=False, device="cpu", model={"dropout": 0.1})
    train({**cfg, "out": str(tmp_path / "whole")})
    train({**cfg, "out": str(tmp_path / "half")}, callbacks=[lambda r: r.get("step") == 20 and "val_loss" in r])
    train({"resume": str(tmp_path / "half"), "progress": False})
    a = arlm.load(tmp_path / "whole" / "latest").model.state_dict()
    b = arlm.load(tmp_path / "half" / "latest").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the result fills masks and goes back to transformers
    out = arlm.pipeline("fill-mask", model=tmp_path / "ft" / "best")("To be, or not to [MASK].")
    assert len(out) == 5 and all(set(o) == {"score", "token", "token_str", "sequence"} for o in out)
    assert main(["convert", "--to-hf", str(tmp_path / "ft" / "best"), "--out", str(tmp_path / "hf")]) == 0
    hf = tf.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([arlm.load(tmp_path / "ft" / "best").tokenizer.encode_prompt("To be, or not to [MASK].")])
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    got = arlm.load(tmp_path / "ft" / "best").model(ids)[0]
    assert float((got - want).abs().max()) < 1e-4


def test_refusals(tmp_path, trained_model):
    bert_folder(tmp_path / "bert")
    (tmp_path / "short.txt").write_text("To be.", encoding="utf-8")
    lm = arlm.load(trained_model)
    with pytest.raises(UserError, match="needs the tokenizer's \\[CLS\\]"):
        MLMData(tmp_path / "short.txt", lm.tokenizer, 64, 0.1)
    with pytest.raises(UserError, match="at least two"):
        MLMData(tmp_path / "short.txt", arlm.load(tmp_path / "bert").tokenizer, 64, 0.1)
