"""Few-shot and in-context evaluation, laid out as lm-evaluation-harness lays it out, so that
``arlm eval --task FILE --few-shot K`` and ``lm_eval --model arlm`` (arlm/lm_eval_model.py) give the
same figures on the same file.

* A multiple-choice example is ``{"prompt": TEXT, "choices": [TEXT, ...], "answer": INDEX or TEXT}``.
  Each choice is scored by the log-likelihood of ``" " + choice`` after the context: ``acc`` picks
  the highest sum, ``acc_norm`` the highest sum divided by the choice's length in characters
  (lm-evaluation-harness's ``acc`` and ``acc_norm``, Gao et al. 2021).
* A generation example (``{"prompt", "reference"}``) is generated for after its context and scored
  with the task's metric (arlm/eval/tasks.py).

The context of an example with K demonstrations is ``p1 + " " + a1 + "\n\n" + ... + pK + " " + aK +
"\n\n" + prompt`` (the harness's default target and few-shot delimiters). The demonstrations are
drawn from the same file, never the example itself, by the harness's sampler: one
``random.Random(seed)`` for the whole file (seed 1234, the harness's default), and for each example
in order K + 1 records drawn without replacement, the example itself removed, the first K kept.

A log-likelihood reads the context and continuation as one text, and the continuation's tokens are
those past the context's own tokens (trailing spaces of the context move to the continuation first,
as the harness does, so that " word" stays one token); windows longer than the model's keep the last
``block_size`` + 1 tokens.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch
import torch.nn.functional as F

from arlm.errors import UserError
from arlm.io.text import check_text

SEED = 1234  # lm-evaluation-harness's default few-shot seed
MAX_CHOICES = 1_000
MAX_SHOTS = 256
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"


def is_choice_task(records: list[Any]) -> bool:
    return any(isinstance(r, dict) and "choices" in r for r in records)


def read_choice(rec: Any, where: str) -> dict[str, Any]:
    """A multiple-choice record, checked: the answer becomes the index of the right choice."""
    shape = '{"prompt": TEXT, "choices": [TEXT, ...], "answer": INDEX or TEXT}'
    if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("choices"), list):
        raise UserError(f"{where}: expected {shape}")
    choices = rec["choices"]
    if not 2 <= len(choices) <= MAX_CHOICES or not all(isinstance(c, str) and c for c in choices):
        raise UserError(f"{where}: 'choices' must be 2 to {MAX_CHOICES} non-empty texts")
    for c in [rec["prompt"], *choices]:
        check_text(c, where)
    answer = rec.get("answer")
    if isinstance(answer, str):
        if answer not in choices:
            raise UserError(f"{where}: the answer {answer[:40]!r} is not one of its choices")
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise UserError(f"{where}: 'answer' must be the index of the right choice (0 to {len(choices) - 1}) or its text")
    return {"prompt": rec["prompt"], "choices": list(choices), "answer": answer}


def check_shots(k: Any, pool: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_SHOTS:
        raise UserError(f"few_shot must be an integer from 0 to {MAX_SHOTS}, got {k!r}")
    if k > pool - 1:
        raise UserError(f"--few-shot {k} needs {k} other examples of the task file to show; it has {pool - 1}: "
                        f"lower --few-shot or add examples")
    return k


def demonstrations(records: list[Any], k: int, seed: int = SEED) -> list[list[int]]:
    """For each record, the indices of its K demonstrations (the harness's sampler; see the module)."""
    if k == 0:
        return [[] for _ in records]
    rnd = random.Random(seed)
    out = []
    for rec in records:
        drawn = [i for i in rnd.sample(range(len(records)), k + 1) if records[i] != rec][:k]
        if len(drawn) < k:  # the record has duplicates in the file: draw again from the others
            drawn = rnd.sample([i for i in range(len(records)) if records[i] != rec], k)
        out.append(drawn)
    return out


def context(prompts: list[str], targets: list[str], demos: list[int], prompt: str) -> str:
    shown = "".join(prompts[i] + TARGET_DELIMITER + targets[i] + FEWSHOT_DELIMITER for i in demos)
    return shown + prompt


def contexts(prompts: list[str], targets: list[str], records: list[Any], k: int, seed: int = SEED) -> list[str]:
    """Each example's prompt after its K demonstrations."""
    check_shots(k, len(prompts))
    return [context(prompts, targets, d, p) for d, p in zip(demonstrations(records, k, seed), prompts)]


def pair_ids(encode: Callable[[str], list[int]], start: list[int], ctx: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and of its continuation (see the module); an empty context is ``start``."""
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, continuation = ctx[:-n], ctx[-n:] + continuation
    if not ctx:
        return start, encode(continuation)
    whole, first = encode(ctx + continuation), encode(ctx)
    return first, whole[len(first):]


@torch.inference_mode()
def loglikelihoods(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the continuation's log-probability under ``model`` and
    whether greedy decoding would have produced it; rows of a batch are right-padded (a causal model
    never reads the padding after a token)."""
    T = model.config.block_size
    device = next(model.parameters()).device
    rows = []
    for ctx, cont in pairs:
        full = (ctx + cont)[-(T + 1):]
        rows.append((full[:-1], full[1:], min(len(cont), len(full) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths together
    out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        width = max(len(rows[i][0]) for i in chunk)
        idx = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, i in enumerate(chunk):
            idx[b, :len(rows[i][0])] = torch.tensor(rows[i][0])
        logits = model(idx.to(device))[0]  # (B, width, V)
        for b, i in enumerate(chunk):
            inp, targets, n = rows[i]
            if n == 0:
                continue
            logp = F.log_softmax(logits[b, len(inp) - n:len(inp)].float(), -1)  # (n, V)
            want = torch.tensor(targets[-n:], device=logp.device)
            out[i] = (float(logp.gather(-1, want[:, None]).sum()), bool((logp.argmax(-1) == want).all()))
    return out


def rolling_pairs(ids: list[int], start: int, block_size: int) -> list[tuple[list[int], list[int]]]:
    """A whole text's tokens as (context, continuation) pairs that together predict every token once:
    the first from ``start`` (end-of-text), then windows of ``block_size`` tokens, each after the token
    before it (the harness's rolling windows with one token of context)."""
    tokens = [start] + ids
    return [(tokens[s:s + 1], tokens[s + 1:s + 1 + block_size]) for s in range(0, len(ids), block_size)]


def choice_scores(lls: list[list[float]], choices: list[list[str]], answers: list[int]) -> dict[str, Any]:
    """acc and acc_norm in percent, as the harness computes them (argmax of the sums, and of the sums
    over the choices' lengths in characters), with the predictions."""
    pred = [max(range(len(l)), key=lambda j: l[j]) for l in lls]
    pred_norm = [max(range(len(l)), key=lambda j: l[j] / len(c[j])) for l, c in zip(lls, choices)]
    n = len(answers)
    return {"acc": 100 * sum(p == a for p, a in zip(pred, answers)) / n,
            "acc_norm": 100 * sum(p == a for p, a in zip(pred_norm, answers)) / n,
            "predictions": pred, "predictions_norm": pred_norm}
