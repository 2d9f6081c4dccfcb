"""Task evaluation: our reported BLEU / chrF / ROUGE / exact match equal the libraries' own, and
`arlm eval --task` writes the predictions it scored."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from arlm.cli import main
from arlm.errors import UserError
from arlm.eval.tasks import read_task, score

PREDICTIONS = ["the cat sat on the mat", "Good night, sweet prince.", "what a piece of work is man", "",
               "To be or not to be"]
REFERENCES = ["the cat is on the mat", "Good night, sweet prince:", "What a piece of work is a man!", "Exit.",
              "To be, or not to be, that is the question"]


def test_bleu_and_chrf_equal_sacrebleu():
    assert score("bleu", PREDICTIONS, REFERENCES)["bleu"] == sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score
    assert score("chrf", PREDICTIONS, REFERENCES)["chrf"] == sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score
    assert score("bleu", REFERENCES, REFERENCES)["bleu"] == pytest.approx(100.0)


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES)]
    ours = score("rouge", PREDICTIONS, REFERENCES)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(100 * sum(d[key].fmeasure for d in direct) / len(direct), abs=1e-12)


def test_exact_match():
    out = score("exact", ["a ", "b", "c"], ["a", "B", "c\n"])
    assert out == {"exact": pytest.approx(200 / 3), "matches": 2}


def test_read_task_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "a", "answer": "b"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="example 2: .*prompt.*reference.*found: prompt, answer"):
        read_task(f)


def test_cli_task_eval_writes_predictions_it_scored(capsys, trained_model, tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in
                            [("Ham.\n", "My lord?"), ("Hor.\n", "Friends to this ground."), ("Ber.\n", "Who's there?")]),
                    encoding="utf-8")
    preds = tmp_path / "preds.jsonl"
    for metric in ("bleu", "chrf", "rouge", "exact"):
        code = main(["eval", "--model", str(trained_model), "--task", str(task), "--metric", metric, "--json",
                     "--max-new-tokens", "12", "--stop", "\n", "--predictions-out", str(preds), "--batch-size", "2"])
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0 and out["examples"] == 3
        rows = [json.loads(ln) for ln in preds.read_text(encoding="utf-8").splitlines()]
        assert [r["reference"] for r in rows] == ["My lord?", "Friends to this ground.", "Who's there?"]
        assert all("\n" not in r["prediction"] and len(r["prediction"]) <= 12 for r in rows)
        expected = score(metric, [r["prediction"] for r in rows], [r["reference"] for r in rows])
        assert {k: out[k] for k in expected} == expected
    # token healing reaches the decoder; one character per token re-spells the prompt's end identically
    plain = preds.read_text(encoding="utf-8")
    assert main(["eval", "--model", str(trained_model), "--task", str(task), "--metric", "exact", "--max-new-tokens", "12",
                 "--stop", "\n", "--predictions-out", str(preds), "--token-healing"]) == 0
    assert preds.read_text(encoding="utf-8") == plain
    # bad input: one line, status 2, and no predictions file written
    missing = tmp_path / "nope" / "p.jsonl"
    assert main(["eval", "--model", str(trained_model), "--task", str(task), "--predictions-out", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()
    assert main(["eval", "--model", str(trained_model), "--task", str(task), "--data", str(task)]) == 2
    assert "not both" in capsys.readouterr().err
