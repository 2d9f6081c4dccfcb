"""Predictions of the task heads (arlm/model/heads.py) and their scores, by the libraries the field
reports with:

* classify: accuracy and macro-F1 (scikit-learn);
* ner: entity-level precision, recall and F1 over BIO tags (seqeval, CoNLL-2003's scoring: an entity
  counts only with its exact span and type), with the words' tags read from each word's first token;
* qa: SQuAD's exact match and F1 against any of the reference answers, after SQuAD v1.1's
  normalisation (lower case, no punctuation or articles), by torchmetrics.

The answer to a question is the span of the context, at most ``max_answer_len`` tokens, with the
highest product of start and end probabilities, each a softmax over the context's tokens; a context longer
than the window is read in overlapping windows. transformers'
question-answering pipeline (v4) does the same.
"""

from __future__ import annotations

from typing import Any

import torch

from arlm.data.tasks import encode_qa, encode_words
from arlm.model.heads import TaskBatch, TaskModel
from arlm.tokenizers.base import encode_with_offsets


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
def classify_logits(model: TaskModel, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Each text's label logits (N, labels), read at its last token."""
    rows = [tokenizer.encode(t) or [tokenizer.eot_id or 0] for t in texts]
    out = []
    for _, batch in _batches(rows, batch_size, model.config.block_size, model.float_param().device):
        out.append(model(batch)[0].float().cpu())
    return torch.cat(out)


def classify(model: TaskModel, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Each text's label probabilities (N, labels)."""
    return torch.softmax(classify_logits(model, tokenizer, texts, batch_size), -1)


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


def _rows_in_batches(rows: list[list[int]], batch_size: int, device):
    """(start, TaskBatch) for each batch of rows that already fit the model's window."""
    yield from _batches(rows, batch_size, max(len(r) for r in rows), device)


@torch.inference_mode()
def tag_tokens(model: TaskModel, tokenizer, texts: list[str], batch_size: int = 16
               ) -> list[tuple[list[int], list[tuple[int, int]], torch.Tensor]]:
    """Each text's token ids, their character spans and each token's label probabilities (n, labels).

    A text longer than the model's window is read in windows that overlap by half of it; each token's
    probabilities come from the window where it has the most text before it (a causal model sees
    only what precedes a token)."""
    T = model.config.block_size
    step = max(1, T // 2)
    encoded = [encode_with_offsets(tokenizer, t) for t in texts]
    rows, where = [], []  # each window's ids; (text, first token, first token kept)
    for i, (ids, _) in enumerate(encoded):
        s = 0
        while True:
            rows.append(ids[s:s + T])
            where.append((i, s, 0 if s == 0 else T - step))
            if s + T >= len(ids):
                break
            s += step
    probs = [torch.zeros(len(ids), len(model.labels)) for ids, _ in encoded]
    for i, batch in _rows_in_batches(rows, batch_size, model.float_param().device):
        p = torch.softmax(model(batch)[0].float(), -1).cpu()  # (B, T, labels)
        for b in range(p.size(0)):
            text, s, keep = where[i + b]
            n = len(rows[i + b])
            probs[text][s + keep:s + n] = p[b, keep:n]
    return [(ids, offsets, pr) for (ids, offsets), pr in zip(encoded, probs)]


def qa_windows(n_question: int, n_context: int, block_size: int, doc_stride: int) -> list[tuple[int, int]]:
    """(first context token, count) of each window over a context that the question leaves room for;
    consecutive windows share ``doc_stride`` tokens (at most half a window), as transformers' v4
    question-answering pipeline splits long contexts."""
    room = block_size - n_question
    if room <= 0:
        return []
    step = max(1, room - min(doc_stride, room // 2))
    out, s = [], 0
    while True:
        out.append((s, min(room, n_context - s)))
        if s + room >= n_context:
            return out
        s += step


@torch.inference_mode()
def answer(model: TaskModel, tokenizer, questions: list[str], contexts: list[str], max_answer_len: int = 15,
           batch_size: int = 16, top_k: int = 1, doc_stride: int = 128) -> list[list[dict[str, Any]]]:
    """Each question's ``top_k`` best answers over its context: [{score, start, end, answer}] (character
    offsets), best first; an empty answer with score 0 when the question leaves no room for the context.

    A span's score is the product of its start and end probabilities, each a softmax over the window's
    context tokens, with start <= end < start + ``max_answer_len``; a long context is read in
    overlapping windows and the best spans of all windows compete (transformers' v4 pipeline)."""
    T = model.config.block_size
    encoded = [encode_qa(tokenizer, q, c) for q, c in zip(questions, contexts)]
    rows, where = [], []
    for i, (ids, first, offsets) in enumerate(encoded):
        for s, n in qa_windows(first, len(offsets), T, doc_stride):
            rows.append(ids[:first] + ids[first + s:first + s + n])
            where.append((i, s, n))
    found: list[list[tuple[float, int, int]]] = [[] for _ in questions]
    for i, batch in (_rows_in_batches(rows, batch_size, model.float_param().device) if rows else ()):
        logits = model(batch)[0].float().cpu()  # (B, T, 2)
        for b in range(logits.size(0)):
            ex, s, n = where[i + b]
            first = encoded[ex][1]
            start = torch.softmax(logits[b, first:first + n, 0], -1)
            end = torch.softmax(logits[b, first:first + n, 1], -1)
            scores = torch.triu(start[:, None] * end[None, :]).tril(max_answer_len - 1).view(-1)  # s <= e < s + max_len
            top = torch.topk(scores, min(top_k, scores.numel()))
            for value, k in zip(top.values.tolist(), top.indices.tolist()):
                a, z = divmod(k, n)
                if value > 0:
                    found[ex].append((value, s + a, s + z))
    out = []
    for ex, spans in enumerate(found):
        offsets, best, seen = encoded[ex][2], [], set()
        for value, a, z in sorted(spans, key=lambda t: -t[0]):
            chars = (offsets[a][0], offsets[z][1])
            if chars not in seen and len(best) < top_k:
                seen.add(chars)
                best.append({"score": value, "start": chars[0], "end": chars[1], "answer": contexts[ex][chars[0]:chars[1]]})
        out.append(best or [{"score": 0.0, "start": 0, "end": 0, "answer": ""}])
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
    found = [best[0] for best in answer(model, tokenizer, [ex["question"] for ex in examples],
                                        [ex["context"] for ex in examples], batch_size=batch_size)]
    records = [{"question": ex["question"], "prediction": f["answer"], "reference": ex["answers"]}
               for ex, f in zip(examples, found)]
    return score_qa([f["answer"] for f in found], [ex["answers"] for ex in examples]), records
