"""Task evaluation: score generated text against references.

A task file is JSONL, one ``{"prompt": ..., "reference": ...}`` per line. The metrics are computed
by the libraries the field reports with, so figures compare with published ones:

* ``bleu``: corpus BLEU (Papineni et al. 2002) by ``sacrebleu`` (Post 2018), its default 13a tokenizer;
* ``chrf``: corpus chrF (Popović 2015) by ``sacrebleu``;
* ``rouge``: ROUGE-1/2/L F1 (Lin 2004) by Google's ``rouge-score``, with its Porter stemmer, averaged
  over examples;
* ``exact``: the share of predictions equal to their reference after stripping surrounding whitespace.

All are reported on a 0-100 scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arlm.errors import UserError
from arlm.io.files import read_jsonl

METRICS = ("bleu", "chrf", "rouge", "exact")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def read_records(path: str | Path, errors: str = "strict") -> list[Any]:
    """The JSON records of a task file; a malformed line, or text that is not valid Unicode (replaced by
    U+FFFD with ``errors="replace"``), is a UserError naming it."""
    records = [rec for _, rec in read_jsonl(path, errors, "pass --errors replace to substitute U+FFFD")]
    if not records:
        raise UserError(f"{path} holds no examples")
    return records


def read_task(path: str | Path, errors: str = "strict") -> list[dict[str, str]]:
    """The {prompt, reference} examples of a task file (see :func:`read_records`)."""
    return check_examples(read_records(path, errors), str(path))


def check_examples(examples: Any, source: str = "examples") -> list[dict[str, str]]:
    """Task examples as {"prompt": TEXT, "reference": TEXT} dicts (extra keys dropped)."""
    if not isinstance(examples, (list, tuple)) or not examples:
        raise UserError(f"{source}: expected a non-empty list of {{\"prompt\": TEXT, \"reference\": TEXT}}")
    out = []
    for n, rec in enumerate(examples, 1):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("reference"), str):
            keys = ", ".join(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__
            raise UserError(f'{source} example {n}: expected {{"prompt": TEXT, "reference": TEXT}}, found: {keys}')
        out.append({"prompt": rec["prompt"], "reference": rec["reference"]})
    return out


def check_metric(metric: Any) -> None:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def score(metric: str, predictions: list[str], references: list[str]) -> dict[str, Any]:
    """``metric`` of ``predictions`` against ``references`` (one reference each): the figure under the
    metric's name (rouge: rouge1, rouge2, rougeL), plus its parts."""
    check_metric(metric)
    assert len(predictions) == len(references) and predictions
    if metric in ("bleu", "chrf"):
        import sacrebleu

        if metric == "bleu":
            bleu = sacrebleu.metrics.BLEU()
            result = bleu.corpus_score(predictions, [references])
            return {"bleu": result.score, "precisions": list(result.precisions), "brevity_penalty": result.bp,
                    "signature": str(bleu.get_signature())}
        chrf = sacrebleu.metrics.CHRF()
        return {"chrf": chrf.corpus_score(predictions, [references]).score, "signature": str(chrf.get_signature())}
    if metric == "rouge":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]  # score(target, prediction)
        return {t: 100 * sum(s[t].fmeasure for s in scores) / len(scores) for t in ROUGE_TYPES}
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {"exact": 100 * hits / len(predictions), "matches": hits}
