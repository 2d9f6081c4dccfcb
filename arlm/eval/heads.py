"""Predictions of the task heads (arlm/model/heads.py) and their scores, by the libraries the field
reports with:

* classify: accuracy and macro-F1 (scikit-learn);
* ner: entity-level precision, recall and F1 over BIO tags (seqeval, CoNLL-2003's scoring: an entity
  counts only with its exact span and type), with the words' tags read from each word's first token;
* qa: SQuAD's exact match and F1 against any of the reference answers, after SQuAD v1.1's
  normalisation (lower case, no punctuation or articles), by torchmetrics.

The answer to a question is the span of the context, at most ``max_answer_len`` tokens, with the
highest product of start and end probabilities, each a softmax over the context's tokens: transformers'
question-answering pipeline (v4) does the same.
"""

from __future__ import annotations

from typing import Any

import torch

from arlm.data.tasks import encode_qa, encode_words
from arlm.model.heads import TaskBatch, TaskModel


def _batches(rows: list[list[int]], batch_size: int, block_size: int, device):
    """(start, TaskBatch) for each batch of right-padded rows, each cut to the model's length."""
    for i in range(0, len(rows), batch_size):
        chunk = [r[:block_size] for r in rows[i:i + batch_size]]
        T = max(len(r) for r in chunk)
        idx = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, r in enumerate(chunk):
            idx[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        yield i, TaskBatch(idx.to(device), torch.tensor([len(r) for r in chunk], device=device))


@torch.inference_mode()
def classify(model: TaskModel, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Each text's label probabilities (N, labels)."""
    rows = [tokenizer.encode(t) or [tokenizer.eot_id or 0] for t in texts]
    out = []
    for _, batch in _batches(rows, batch_size, model.config.block_size, model.float_param().device):
        out.append(torch.softmax(model(batch)[0].float(), -1).cpu())
    return torch.cat(out)


@torch.inference_mode()
def tag(model: TaskModel, tokenizer, sentences: list[list[str]], batch_size: int = 16) -> list[list[tuple[str, float]]]:
    """Each word's (tag, probability), from its first token; words past the model's length get "O"."""
    encoded = [encode_words(tokenizer, words) for words in sentences]
    out: list[list[tuple[str, float]]] = []
    T = model.config.block_size
    for i, batch in _batches([ids for ids, _ in encoded], batch_size, T, model.float_param().device):
        probs = torch.softmax(model(batch)[0].float(), -1).cpu()  # (B, T, labels)
        for b in range(probs.size(0)):
            firsts = encoded[i + b][1]
            row = []
            for f in firsts:
                if 0 <= f < min(T, len(encoded[i + b][0])):
                    p, k = probs[b, f].max(-1)
                    row.append((model.labels[int(k)], float(p)))
                else:
                    row.append(("O", 0.0))
            out.append(row)
    return out


@torch.inference_mode()
def answer(model: TaskModel, tokenizer, questions: list[str], contexts: list[str], max_answer_len: int = 15,
           batch_size: int = 16) -> list[dict[str, Any]]:
    """Each question's answer over its context: {answer, score, start, end} (character offsets)."""
    encoded = [encode_qa(tokenizer, q, c) for q, c in zip(questions, contexts)]
    out = []
    T = model.config.block_size
    for i, batch in _batches([ids for ids, _, _ in encoded], batch_size, T, model.float_param().device):
        logits = model(batch)[0].float().cpu()  # (B, T, 2)
        for b in range(logits.size(0)):
            ids, first, offsets = encoded[i + b]
            n = min(len(ids), T) - first  # context tokens the model read
            if n <= 0:
                out.append({"answer": "", "score": 0.0, "start": 0, "end": 0})
                continue
            start = torch.softmax(logits[b, first:first + n, 0], -1)
            end = torch.softmax(logits[b, first:first + n, 1], -1)
            scores = torch.triu(start[:, None] * end[None, :]).tril(max_answer_len - 1)  # s <= e < s + max_len
            k = int(scores.argmax())
            s, e = divmod(k, n)
            a, z = offsets[s][0], offsets[e][1]
            out.append({"answer": contexts[i + b][a:z], "score": float(scores.view(-1)[k]), "start": a, "end": z})
    return out


def score_classify(predicted: list[str], gold: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": 100 * accuracy_score(gold, predicted),
            "macro_f1": 100 * f1_score(gold, predicted, average="macro", zero_division=0)}


def score_ner(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"entity_f1": 100 * f1_score(gold, predicted, zero_division=0),
            "precision": 100 * precision_score(gold, predicted, zero_division=0),
            "recall": 100 * recall_score(gold, predicted, zero_division=0)}


def score_qa(predicted: list[str], gold: list[list[str]]) -> dict[str, float]:
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predicted)]
    target = [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(gold)]
    out = squad(preds, target)
    return {"exact_match": float(out["exact_match"]), "f1": float(out["f1"])}


def evaluate_head(model: TaskModel, tokenizer, examples: list[dict[str, Any]], batch_size: int = 16
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores of ``model`` on ``examples`` (as arlm/data/tasks.py reads them) and one prediction record each."""
    if model.task == "classify":
        probs = classify(model, tokenizer, [ex["text"] for ex in examples], batch_size)
        predicted = [model.labels[int(k)] for k in probs.argmax(-1)]
        records = [{"text": ex["text"], "prediction": p, "reference": ex["label"]} for ex, p in zip(examples, predicted)]
        return score_classify(predicted, [ex["label"] for ex in examples]), records
    if model.task == "ner":
        predicted = [[t for t, _ in row] for row in tag(model, tokenizer, [ex["tokens"] for ex in examples], batch_size)]
        records = [{"tokens": ex["tokens"], "prediction": p, "reference": ex["tags"]} for ex, p in zip(examples, predicted)]
        return score_ner(predicted, [ex["tags"] for ex in examples]), records
    found = answer(model, tokenizer, [ex["question"] for ex in examples], [ex["context"] for ex in examples],
                   batch_size=batch_size)
    records = [{"question": ex["question"], "prediction": f["answer"], "reference": ex["answers"]}
               for ex, f in zip(examples, found)]
    return score_qa([f["answer"] for f in found], [ex["answers"] for ex in examples]), records
