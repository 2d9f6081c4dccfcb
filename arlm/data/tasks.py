"""Labelled examples for the task heads (arlm/model/heads.py), one JSON object per line:

* classify: ``{"text": ..., "label": ...}``;
* ner: ``{"tokens": [word, ...], "tags": [tag, ...]}`` (``ner_tags`` also read), BIO tags such as
  ``B-PER``, ``I-PER``, ``O``, as the CoNLL-2003 and Hugging Face datasets give them;
* qa: SQuAD's ``{"context": ..., "question": ..., "answers": {"text": [...], "answer_start": [...]}}``,
  or ``{"context", "question", "answer"}`` with the answer's first occurrence in the context.

Words are joined with spaces and encoded as one text; a word's tag goes on the first token that
covers any of its characters, and the word's other tokens are not scored (as transformers' token
classification guide labels sub-words). A question-answering example reads the question, the
end-of-text token, then the context; its labels are the first and last token of the answer (the
first answer, when several are given). The labels of a classifier or a tagger are those the file
uses, sorted, unless the model being fine-tuned already has a head: then its labels, and a label
outside them is an error naming the line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arlm.data.sft import ExampleData, read_jsonl
from arlm.errors import UserError
from arlm.io.text import check_text
from arlm.model.heads import IGNORE, TASK_NAMES, TaskBatch
from arlm.tokenizers.base import Tokenizer, encode_with_offsets

log = logging.getLogger(__name__)

MAX_LABELS = 10_000  # labels a head may have (a typo in a label column should not size a 10^6-way layer)
SHAPES = {"classify": '{"text": TEXT, "label": LABEL}',
          "ner": '{"tokens": [WORD, ...], "tags": [TAG, ...]}',
          "qa": '{"context": TEXT, "question": TEXT, "answers": {"text": [ANSWER], "answer_start": [CHAR]}}'}


def _text(rec: dict, key: str, where: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {key!r} must be non-empty text")
    check_text(value, f"{where} {key}")
    return value


def read_example(task: str, rec: Any, where: str) -> dict[str, Any]:
    """One record as the task's fields, checked; errors name the line and the expected shape."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected {SHAPES[task]}, got {str(rec)[:80]}")
    if task == "classify":
        label = rec.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
            raise UserError(f"{where}: expected {SHAPES[task]}; 'label' must be a name or a number")
        return {"text": _text(rec, "text", where), "label": str(label)}
    if task == "ner":
        words, tags = rec.get("tokens"), rec.get("tags", rec.get("ner_tags"))
        if not isinstance(words, list) or not isinstance(tags, list) or not words:
            raise UserError(f"{where}: expected {SHAPES[task]}")
        if len(words) != len(tags):
            raise UserError(f"{where}: {len(words)} tokens but {len(tags)} tags; give one tag per token")
        if not all(isinstance(w, str) and w and not w.isspace() for w in words):
            raise UserError(f"{where}: every token must be a non-empty word")
        if not all(isinstance(t, str) and (t == "O" or t[:2] in ("B-", "I-") and len(t) > 2) for t in tags):
            bad = next(t for t in tags if not (isinstance(t, str) and (t == "O" or t[:2] in ("B-", "I-") and len(t) > 2)))
            raise UserError(f"{where}: tag {bad!r} is not a BIO tag (O, B-TYPE or I-TYPE)")
        for w in words:
            check_text(w, where)
        return {"tokens": words, "tags": tags}
    context, question = _text(rec, "context", where), _text(rec, "question", where)
    answers = rec.get("answers")
    if isinstance(answers, list) and answers and all(isinstance(a, str) and a for a in answers) \
            and isinstance(rec.get("start"), int) and not isinstance(rec["start"], bool):
        # the form this function returns (a record read once, passed on): the first answer at "start"
        start = rec["start"]
        if context[start:start + len(answers[0])] != answers[0]:
            raise UserError(f"{where}: answer {answers[0]!r} is not at character {start} of the context")
        return {"context": context, "question": question, "answers": list(answers), "start": start}
    if answers is not None:
        texts, starts = (answers.get("text"), answers.get("answer_start")) if isinstance(answers, dict) else (None, None)
        if not isinstance(texts, list) or not isinstance(starts, list) or not texts or len(texts) != len(starts):
            raise UserError(f"{where}: 'answers' must be {{\"text\": [ANSWER, ...], \"answer_start\": [CHAR, ...]}}")
        for text, start in zip(texts, starts):
            if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(start, int):
                raise UserError(f"{where}: each answer needs its text and the character where it starts")
            if context[start:start + len(text)] != text:
                raise UserError(f"{where}: answer {text!r} is not at character {start} of the context "
                                f"(the span there reads {context[start:start + len(text)]!r})")
        return {"context": context, "question": question, "answers": texts, "start": starts[0]}
    answer = _text(rec, "answer", where)
    start = rec.get("answer_start", context.find(answer))
    if isinstance(start, bool) or not isinstance(start, int) or context[start:start + len(answer)] != answer:
        raise UserError(f"{where}: the answer {answer!r} is not in the context" if context.find(answer) < 0 else
                        f"{where}: answer_start does not point at the answer in the context")
    return {"context": context, "question": question, "answers": [answer], "start": start}


def read_task_examples(path: str | Path, task: str) -> list[dict[str, Any]]:
    return [read_example(task, rec, f"{path} example {i + 1}") for i, rec in enumerate(read_jsonl(path))]


def labels_of(task: str, examples: list[dict[str, Any]], fixed: list[str] | None, path: str) -> list[str]:
    """The head's labels: ``fixed`` (a head already trained), checked against the file, else the file's, sorted."""
    if task == "qa":
        return []
    used = [ex["label"] for ex in examples] if task == "classify" else [t for ex in examples for t in ex["tags"]]
    if fixed:
        known = set(fixed)
        for i, ex in enumerate(examples):
            bad = [x for x in ([ex["label"]] if task == "classify" else ex["tags"]) if x not in known]
            if bad:
                raise UserError(f"{path} example {i + 1}: label {bad[0]!r} is not one of the model's labels "
                                f"({', '.join(fixed[:20])}{' ...' if len(fixed) > 20 else ''})")
        return list(fixed)
    labels = sorted(set(used))
    if task == "ner" and "O" not in labels:
        labels = ["O"] + labels
    if len(labels) < 2:
        raise UserError(f"{path}: every example has the label {labels[0]!r}; {TASK_NAMES[task]} needs at least 2 labels")
    if len(labels) > MAX_LABELS:
        raise UserError(f"{path}: {len(labels):,} different labels (at most {MAX_LABELS:,}); is the label column right?")
    return labels


def encode_words(tokenizer: Tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    """Ids of the words joined by spaces, and for each word the index of its first token."""
    text = " ".join(words)
    ids, offsets = encode_with_offsets(tokenizer, text)
    firsts, pos, t = [], 0, 0
    for w in words:
        start, end = pos, pos + len(w)
        while t < len(offsets) and offsets[t][1] <= start:
            t += 1
        firsts.append(t if t < len(offsets) and offsets[t][0] < end else -1)
        pos = end + 1
    return ids, firsts


def encode_qa(tokenizer: Tokenizer, question: str, context: str) -> tuple[list[int], int, list[tuple[int, int]]]:
    """Ids of question, end-of-text, context; where the context starts; the context tokens' character spans."""
    q = tokenizer.encode(question)
    sep = [tokenizer.eot_id] if tokenizer.eot_id is not None else []
    ids, offsets = encode_with_offsets(tokenizer, context)
    return q + sep + ids, len(q) + len(sep), offsets


def answer_tokens(offsets: list[tuple[int, int]], first: int, start: int, end: int) -> tuple[int, int] | None:
    """The first and last token (positions in the sequence) covering characters [start, end), or None."""
    covering = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if not covering:
        return None
    return first + covering[0], first + covering[-1]


class TaskData(ExampleData):
    """Examples of one task split into train/val (the last ``val_fraction`` of the file is held out), for
    the training loop: :meth:`rows`, :meth:`collate` into (TaskBatch, labels), :meth:`val_batches`."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, task: str, block_size: int, val_fraction: float,
                 labels: list[str] | None = None):
        self.path, self.tokenizer, self.task = Path(path), tokenizer, task
        examples = read_task_examples(path, task)
        self.labels = labels_of(task, examples, labels, str(path))
        index = {name: i for i, name in enumerate(self.labels)}
        rows, cut, lost = [], 0, 0
        for i, ex in enumerate(examples):
            try:
                row = self._encode(ex, index, block_size)
            except UserError as e:  # (a character outside a character vocabulary)
                raise UserError(f"{path} example {i + 1}: {e}") from None
            if row is None:
                lost += 1
                continue
            cut += row[2]
            rows.append(row[:2])
        if cut:
            log.warning("%d of %d examples were longer than the model reads (%d tokens) and were cut", cut,
                        len(examples), block_size)
        if lost:
            log.warning("%d of %d question-answering examples lost their answer to the cut and were left out", lost,
                        len(examples))
        n_val = max(1, int(round(len(rows) * val_fraction)))
        if len(rows) - n_val < 1:
            raise UserError(f"{path}: {len(rows)} example(s) cannot be split into training and validation; add examples")
        self.train, self.val = rows[:-n_val], rows[-n_val:]
        self.meta = {"format": "task", "task": task, "source": str(self.path), "examples": len(rows),
                     "train_examples": len(self.train), "val_examples": len(self.val), "labels": self.labels,
                     "vocab_size": tokenizer.vocab_size, "train_tokens": int(sum(len(x) for x, _ in self.train))}

    def _encode(self, ex: dict[str, Any], index: dict[str, int], T: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """(ids, labels, whether it was cut), or None for an answer the cut removed."""
        if self.task == "classify":
            ids = self.tokenizer.encode(ex["text"])
            return np.asarray(ids[:T], dtype=np.int64), np.asarray([index[ex["label"]]]), len(ids) > T
        if self.task == "ner":
            ids, firsts = encode_words(self.tokenizer, ex["tokens"])
            y = np.full(len(ids), IGNORE, dtype=np.int64)
            for first, tag in zip(firsts, ex["tags"]):
                if 0 <= first:
                    y[first] = index[tag]
            return np.asarray(ids[:T], dtype=np.int64), y[:T], len(ids) > T
        ids, first, offsets = encode_qa(self.tokenizer, ex["question"], ex["context"])
        span = answer_tokens(offsets, first, ex["start"], ex["start"] + len(ex["answers"][0]))
        if span is None or span[1] >= T:
            return None
        return np.asarray(ids[:T], dtype=np.int64), np.asarray(span, dtype=np.int64), len(ids) > T

    def collate(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[TaskBatch, torch.Tensor]:
        """Right-padded ids with their lengths, and the labels: (B,) classes, (B, T) tags (IGNORE on
        padding), or (B, 2) answer spans."""
        T = max(len(x) for x, _ in rows)
        idx = np.zeros((len(rows), T), dtype=np.int64)
        for r, (x, _) in enumerate(rows):
            idx[r, :len(x)] = x
        lengths = torch.tensor([len(x) for x, _ in rows])
        if self.task == "ner":
            y = np.full((len(rows), T), IGNORE, dtype=np.int64)
            for r, (_, tags) in enumerate(rows):
                y[r, :len(tags)] = tags
        else:
            y = np.stack([lab for _, lab in rows]).reshape(len(rows), -1)
            y = y[:, 0] if self.task == "classify" else y
        return TaskBatch(torch.from_numpy(idx), lengths), torch.from_numpy(np.ascontiguousarray(y))
