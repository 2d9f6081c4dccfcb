"""Task heads fine-tuned through the one training loop (arlm/model/heads.py, arlm/data/tasks.py): a
classifier learns to tell two plays apart, a tagger learns the speakers' names, a reader finds the
answer span; resume == uninterrupted; LoRA trains the head beside the adapters; `arlm eval --task`
reports the libraries' figures for the predictions it writes; bad labels and flags are refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from arlm.cli import main
from arlm.data.tasks import TaskData, encode_words
from arlm.errors import UserError
from arlm.eval.heads import score_classify, score_ner, score_qa
from arlm.interop.load import load_model
from arlm.model.heads import IGNORE, TaskModel
from arlm.train.loop import train
from tests.conftest import CORPUS


def lines_of(play: str, n: int, skip: int = 200) -> list[str]:
    out = [ln.strip() for ln in (CORPUS / play).read_text(encoding="utf-8").splitlines()[skip:] if len(ln.strip()) > 12]
    return [ln[:28] for ln in out[:n]]


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    ham = lines_of("hamlet.txt", 60)
    # classify: is the line a question? Told by its last character, which only the last real token of
    # a padded row sees: a head that read another position would stay at chance
    short = [ln.strip() for ln in (CORPUS / "hamlet.txt").read_text(encoding="utf-8").splitlines() if 8 < len(ln.strip()) < 32]
    asks, says = [t for t in short if t.endswith("?")][:60], [t for t in short if t[-1] in ".,;:"][:60]
    classify = [r for pair in zip(({"text": t, "label": "question"} for t in asks),
                                  ({"text": t, "label": "other"} for t in says)) for r in pair]
    # ner: capitalised words are names (B-NAME), the rest O: a rule in the text itself
    ner = []
    for t in ham[:50]:
        words = t.split()
        ner.append({"tokens": words, "tags": ["B-NAME" if w[:1].isupper() else "O" for w in words]})
    # qa: "which word comes after X?" over a line; the answer is the next word
    qa = []
    for t in ham[:60]:
        words = t.split()
        if len(words) >= 3:
            start = t.index(" " + words[2]) + 1 if words[2] != words[1] else t.index(words[2], len(words[0]) + 1)
            qa.append({"context": t, "question": words[1], "answers": {"text": [words[2]], "answer_start": [start]}})
    return {"classify": write(d / "classify.jsonl", classify), "ner": write(d / "ner.jsonl", ner),
            "qa": write(d / "qa.jsonl", qa)}


def run_config(trained_model, data, out, task) -> dict:
    return dict(init_from=str(trained_model), data=data, out=str(out), task=task, max_steps=40, batch_size=8,
                eval_interval=20, eval_batches=2, log_interval=5, warmup_steps=2, lr=3e-3, min_lr=3e-4, progress=False,
                device="cpu", final_eval=False, val_fraction=0.2, model={"dropout": 0.0})


def run(trained_model, data, out, task, **kw):
    return train({**run_config(trained_model, data, out, task), **kw})


def test_batches_label_each_words_first_token(trained_model, task_files):
    model, tok, _ = load_model(trained_model)
    data = TaskData(task_files["ner"], tok, "ner", 32, 0.2)
    assert data.labels == ["B-NAME", "O"]
    words = ["Ham.", "Who", "is", "there"]
    ids, firsts = encode_words(tok, words)
    assert tok.decode(ids) == "Ham. Who is there" and firsts == [0, 5, 9, 12]  # one character per token
    batch, y = data.collate(data.train[:3])
    assert batch.idx.shape == y.shape and (y[batch.idx == 0] == IGNORE).all()
    n_words = [len(r["tokens"]) for r in map(json.loads, open(task_files["ner"]))][:3]
    assert [int((row != IGNORE).sum()) for row in y] == n_words  # lines of at most 28 characters: nothing cut


@pytest.mark.parametrize("task", ["classify", "ner", "qa"])
def test_each_head_learns_through_the_loop(trained_model, task_files, tmp_path, task):
    summary = run(trained_model, task_files[task], tmp_path / "run", task, max_steps=60)
    losses = [json.loads(ln)["loss"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in ln]
    assert losses[-1] < losses[0]
    model, _, info = load_model(tmp_path / "run" / "best")
    assert isinstance(model, TaskModel) and info.head.task == task
    assert summary["best_val_loss"] is not None


def test_classifier_beats_chance_and_eval_reports_sklearns_figures(trained_model, task_files, tmp_path, capsys):
    run(trained_model, task_files["classify"], tmp_path / "run", "classify", max_steps=80)
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", "--model", str(tmp_path / "run" / "best"), "--task", task_files["classify"], "--json",
                 "--predictions-out", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(ln) for ln in preds.read_text().splitlines()]
    assert len(rows) == out["examples"] == 120
    want = score_classify([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert out["accuracy"] == pytest.approx(want["accuracy"]) and out["macro_f1"] == pytest.approx(want["macro_f1"])
    assert out["accuracy"] > 90  # (train and held-out lines)
    # the predictions file may not be the task file, nor a file arlm did not write
    before = open(task_files["classify"], "rb").read()
    for target in (task_files["classify"], write(tmp_path / "mine.jsonl", [{"a": 1}])):
        assert main(["eval", "--model", str(tmp_path / "run" / "best"), "--task", task_files["classify"],
                     "--predictions-out", target]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert open(task_files["classify"], "rb").read() == before and (tmp_path / "mine.jsonl").read_text() == '{"a": 1}\n'


def test_resume_equals_uninterrupted(trained_model, task_files, tmp_path):
    cfg = dict(max_steps=30, eval_interval=10, model={"dropout": 0.1})  # (the head's dropout: RNG restored too)
    run(trained_model, task_files["ner"], tmp_path / "whole", "ner", **cfg)
    # the same run stopped at step 20 (a callback returning True stops it), then resumed to 30
    train({**run_config(trained_model, task_files["ner"], tmp_path / "part", "ner"), **cfg},
          callbacks=[lambda r: r.get("step") == 20 and "val_loss" in r])
    train({"resume": str(tmp_path / "part"), "progress": False})
    a, _, _ = load_model(tmp_path / "whole" / "latest")
    b, _, _ = load_model(tmp_path / "part" / "latest")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_lora_trains_the_head_beside_the_adapters(trained_model, task_files, tmp_path):
    run(trained_model, task_files["qa"], tmp_path / "lora", "qa", lora_rank=4, adapter_only=True, max_steps=20)
    model, _, info = load_model(tmp_path / "lora" / "best")
    base, _, _ = load_model(trained_model)
    assert info.head.task == "qa" and info.lora.adapter_only
    assert isinstance(model, TaskModel) and not torch.equal(model.body.transformer.h[0].attn.c_attn.weight,
                                                            base.transformer.h[0].attn.c_attn.weight)  # merged
    assert model.score.weight.abs().sum() > 0


def test_metrics_are_the_libraries():
    assert score_ner([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])["entity_f1"] == 100.0
    assert score_ner([["B-PER", "O", "O"]], [["B-PER", "I-PER", "O"]])["entity_f1"] == 0.0  # the span must be exact
    assert score_qa(["The cat"], [["the cat!"]]) == {"exact_match": 100.0, "f1": 100.0}
    assert score_qa(["a dog"], [["the cat", "dog"]])["exact_match"] == 100.0  # articles dropped, any reference


@pytest.mark.parametrize("record, message", [
    ({"text": "x", "label": "comedy"}, "label 'comedy' is not one of the model's labels"),
    ({"text": "", "label": "hamlet"}, "'text' must be non-empty text"),
    ({"tokens": ["a"], "tags": ["O"]}, "expected"),
])
def test_labels_outside_the_heads_are_refused(trained_model, task_files, tmp_path, record, message):
    run(trained_model, task_files["classify"], tmp_path / "run", "classify", max_steps=2, eval_interval=1)
    bad = write(tmp_path / "bad.jsonl", [{"text": "to be or not?", "label": "question"}, record] * 3)
    with pytest.raises(UserError, match=message):
        run(tmp_path / "run" / "best", bad, tmp_path / "again", "classify")


@pytest.mark.parametrize("records, message", [
    ([{"tokens": ["a", "b"], "tags": ["O"]}], "2 tokens but 1 tags"),
    ([{"tokens": ["a"], "tags": ["PER"]}], "not a BIO tag"),
    ([{"context": "a b c", "question": "q", "answers": {"text": ["b"], "answer_start": [0]}}], "is not at character 0"),
    ([{"context": "a b c", "question": "q", "answer": "zz"}], "is not in the context"),
    ([{"tokens": ["a", "\u4e2d"], "tags": ["O", "B-X"]}], "outside this character-level vocabulary"),
])
def test_damaged_examples_are_named_by_line(trained_model, tmp_path, records, message):
    task = "ner" if "tokens" in records[0] else "qa"
    bad = write(tmp_path / "bad.jsonl", records * 4)
    with pytest.raises(UserError, match=f"bad.jsonl example 1: .*{message}"):
        run(trained_model, bad, tmp_path / "run", task)
    assert not (tmp_path / "run").exists()


def test_flags_that_do_not_apply_are_refused(trained_model, task_files, tmp_path, capsys):
    assert main(["finetune", "--model", str(trained_model), "--data", task_files["classify"], "--task", "classify",
                 "--out", str(tmp_path / "o"), "--packing"]) == 2
    assert "--packing does not apply to --task classify" in capsys.readouterr().err
    run(trained_model, task_files["classify"], tmp_path / "run", "classify", max_steps=2, eval_interval=1)
    with pytest.raises(UserError, match="has a classify head; fine-tune it with --task classify"):
        run(tmp_path / "run" / "best", task_files["ner"], tmp_path / "x", "ner")
    with pytest.raises(UserError, match="has a classify head in place of its output layer: fine-tune it with --task"):
        run(tmp_path / "run" / "best", task_files["classify"], tmp_path / "x", "")  # as a language model
    assert main(["eval", "--model", str(tmp_path / "run" / "best"), "--task", task_files["classify"],
                 "--num-beams", "2"]) == 2
    assert "--num-beams does not apply to a text classification head" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("head, message", [
    ({"task": "classify", "labels": ["a"]}, "at least 2 labels"),
    ({"task": "sentiment", "labels": ["a", "b"]}, "sentiment"),
    ({"task": "classify", "labels": ["a", "a"]}, "distinct"),
    ({"task": "qa", "labels": ["a", "b"]}, "has no labels"),
    ({"task": "classify", "labels": ["a", "b", "c"]}, r"score.weight has shape \(2, 32\), the config needs \(3, 32\)"),
])
def test_damaged_head_in_config_json_is_named(trained_model, task_files, tmp_path, head, message):
    run(trained_model, task_files["classify"], tmp_path / "run", "classify", max_steps=2, eval_interval=1)
    config = tmp_path / "run" / "best" / "config.json"
    data = json.loads(config.read_text())
    assert data["head"]["task"] == "classify" and data["head"]["labels"] == ["other", "question"]
    config.write_text(json.dumps({**data, "head": head}))
    with pytest.raises(UserError, match=message):
        load_model(tmp_path / "run" / "best")


def test_cli_reports_the_loss_per_label(trained_model, task_files, tmp_path, capsys):
    assert main(["finetune", "--model", str(trained_model), "--data", task_files["classify"], "--task", "classify",
                 "--out", str(tmp_path / "o"), "--max-steps", "4", "--eval-interval", "2", "--batch-size", "4",
                 "--no-progress", "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "validation (whole split, 24 labels): loss" in out and "nats/label" in out and "perplexity" not in out


def test_qa_eval_from_the_cli_in_both_shapes(trained_model, task_files, tmp_path, capsys):
    """eval --task on a question-answering head reads SQuAD's shape and {context, question, answer}."""
    run(trained_model, task_files["qa"], tmp_path / "run", "qa", max_steps=10)
    rows = [json.loads(ln) for ln in open(task_files["qa"], encoding="utf-8")]
    short = write(tmp_path / "short.jsonl", [{"context": r["context"], "question": r["question"],
                                               "answer": r["answers"]["text"][0]} for r in rows])
    figures = []
    for f in (task_files["qa"], short):
        assert main(["eval", "--model", str(tmp_path / "run" / "best"), "--task", f, "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["examples"] == len(rows) and 0 <= out["exact_match"] <= 100
        figures.append((out["exact_match"], out["f1"]))
    # the first occurrence of each answer is where SQuAD's shape puts it in these files
    assert figures[0] == figures[1]
