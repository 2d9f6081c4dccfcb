"""Bias probes: each pair's gaps equal log-likelihoods taken directly, the interval holds the mean,
per-group metrics equal fairlearn's on the classifier's own predictions, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import arlm
from arlm.cli import main
from arlm.errors import UserError
from arlm.eval.fairness import counterfactual, group_metrics

tf = pytest.importorskip("transformers")


def test_counterfactual_gaps(trained_model):
    lm = arlm.load(trained_model)
    templates = ["{} is a noble lord.", "Let {} speak."]
    pairs = [("he", "she"), ("the king", "the queen"), ("Hamlet", "Ophelia")]
    result = counterfactual(lm.loglikelihood, templates, pairs, seed=1)
    assert len(result["rows"]) == 6
    first = result["rows"][0]
    (sa, _), (sb, _) = lm.loglikelihood([("", "He is a noble lord."), ("", "She is a noble lord.")])
    (ra, _), (rb, _) = lm.loglikelihood([("He", " is a noble lord."), ("She", " is a noble lord.")])
    assert first["sentence_gap"] == pytest.approx(sa - sb, abs=1e-5) and first["rest_gap"] == pytest.approx(ra - rb, abs=1e-5)
    for key in ("sentence_gap", "rest_gap"):
        s = result["summary"][key]
        values = [r[key] for r in result["rows"]]
        assert s["mean"] == pytest.approx(np.mean(values)) and s["ci95"][0] <= s["mean"] <= s["ci95"][1]
        assert s["a_more_likely"] == pytest.approx(np.mean(np.array(values) > 0))
    assert counterfactual(lm.loglikelihood, templates, pairs, seed=1)["summary"] == result["summary"]  # seeded
    for bad, message in [((["no slot"], pairs), "exactly one {}"), ((["{} and {}"], pairs), "exactly one {}"),
                         ((templates, [("he",)]), "two non-empty terms"), ((templates, [("he", "he")]), "both terms")]:
        with pytest.raises(UserError, match=message):
            counterfactual(lm.loglikelihood, *bad)


def test_group_metrics_equal_fairlearn_by_hand():
    y_true = ["pos", "neg", "pos", "pos", "neg", "neg", "pos", "neg"]
    y_pred = ["pos", "pos", "neg", "pos", "neg", "neg", "pos", "pos"]
    groups = ["a", "a", "a", "a", "b", "b", "b", "b"]
    r = group_metrics(y_true, y_pred, groups, "pos")
    assert r["by_group"]["a"]["selection_rate"] == pytest.approx(3 / 4) and r["by_group"]["b"]["selection_rate"] == pytest.approx(2 / 4)
    assert r["by_group"]["a"]["accuracy"] == pytest.approx(2 / 4) and r["by_group"]["b"]["accuracy"] == pytest.approx(3 / 4)
    assert r["demographic_parity_difference"] == pytest.approx(0.25)
    # equalized odds: TPR a 2/3, b 1/1; FPR a 1/1, b 1/3 -> max(1/3, 2/3)
    assert r["equalized_odds_difference"] == pytest.approx(2 / 3)
    with pytest.raises(UserError, match="one value"):
        group_metrics(y_true, y_pred, ["a"] * 8, "pos")


def classifier(path):
    from tests.interop.hf_models import bpe_tokenizer, hf_config
    import torch

    torch.manual_seed(0)
    cfg = hf_config("gpt2", pad_token_id=0, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    model = tf.GPT2ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    tf.PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(), eos_token="<|endoftext|>").save_pretrained(path)


def test_cli_probes(trained_model, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("# a comment\n{} is a noble lord.\nLet {} speak.\n", encoding="utf-8")
    (tmp_path / "p.tsv").write_text("male\tfemale\nhe\tshe\nthe king\tthe queen\n", encoding="utf-8")
    assert main(["probe", "bias", "--model", str(trained_model), "--templates", str(tmp_path / "t.txt"), "--pairs",
                 str(tmp_path / "p.tsv"), "--plot", str(tmp_path / "gaps.png"), "--out", str(tmp_path / "gaps.jsonl"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["groups"] == ["male", "female"] and out["templates"] == 2 and out["pairs"] == 2
    assert (tmp_path / "gaps.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "gaps.jsonl").read_text().splitlines()) == 4
    # a rerun replaces its own plot and pairs file
    assert main(["probe", "bias", "--model", str(trained_model), "--templates", str(tmp_path / "t.txt"), "--pairs",
                 str(tmp_path / "p.tsv"), "--plot", str(tmp_path / "gaps.png"), "--out", str(tmp_path / "gaps.jsonl")]) == 0
    assert "whole sentence" in capsys.readouterr().out

    classifier(tmp_path / "clf")
    texts = ["my lord is kind", "the queen is cruel", "a fair day", "he speaks", "she weeps", "the king is glad"] * 2
    rows = [{"text": t, "label": ["neg", "pos"][i % 2], "group": ["a", "b", "c"][i % 3]} for i, t in enumerate(texts)]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["probe", "groups", "--model", str(tmp_path / "clf"), "--task", str(tmp_path / "g.jsonl"),
                 "--positive", "pos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    clf = arlm.pipeline("text-classification", model=tmp_path / "clf")
    predicted = [p["label"] for p in clf(texts)]
    want = group_metrics([r["label"] for r in rows], predicted, [r["group"] for r in rows], "pos")
    assert set(out["by_group"]) == {"a", "b", "c"}
    for g, row in want["by_group"].items():
        assert out["by_group"][g] == pytest.approx(row)
    assert out["demographic_parity_difference"] == pytest.approx(want["demographic_parity_difference"])

    (tmp_path / "bad_t.txt").write_text("no slot here\n", encoding="utf-8")
    (tmp_path / "bad_p.tsv").write_text("male\tfemale\nhe she\n", encoding="utf-8")
    (tmp_path / "nogroup.jsonl").write_text(json.dumps({"text": "a", "label": "pos"}) + "\n", encoding="utf-8")
    (tmp_path / "notes.png").write_text("mine", encoding="utf-8")
    (tmp_path / "tmpl.jsonl").write_text("{} is a noble lord.\n", encoding="utf-8")  # templates, named like an output
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    bias = ["probe", "bias", "--model", str(trained_model), "--templates", str(tmp_path / "t.txt"), "--pairs", str(tmp_path / "p.tsv")]
    groups = ["probe", "groups", "--model", str(tmp_path / "clf"), "--task", str(tmp_path / "g.jsonl")]
    for argv, message in [
        (bias[:-4] + ["--templates", str(tmp_path / "bad_t.txt"), "--pairs", str(tmp_path / "p.tsv")], "exactly one {}"),
        (bias[:-2] + ["--pairs", str(tmp_path / "bad_p.tsv")], "two tab-separated terms"),
        (bias + ["--plot", str(tmp_path / "notes.png")], "is not a PNG image"),
        (bias + ["--plot", str(tmp_path / "gaps.jpg")], "name it FILE.png"),
        (bias + ["--out", str(tmp_path / "t.txt")], "FILE.jsonl"),
        (bias + ["--out", str(tmp_path / "t.jsonl"), "--plot", str(trained_model / "gaps.png")], "inside the model folder"),
        (bias[:4] + ["--templates", str(tmp_path / "tmpl.jsonl"), "--pairs", str(tmp_path / "p.tsv"), "--out",
                     str(tmp_path / "tmpl.jsonl")], "templates file being read"),
        (groups, "add --positive"),
        (groups + ["--positive", "maybe"], "not one of the classifier's labels"),
        (["probe", "groups", "--model", str(tmp_path / "clf"), "--task", str(tmp_path / "nogroup.jsonl"), "--positive", "pos"],
         "expected the group under 'group'"),
        (["probe", "groups", "--model", str(trained_model), "--task", str(tmp_path / "g.jsonl"), "--positive", "pos"],
         "no text-classification head"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
