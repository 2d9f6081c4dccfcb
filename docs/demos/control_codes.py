"""Measure what a model trained with control codes learned from them (docs/finetuning.md, control codes).

    python docs/demos/control_codes.py --model runs/demos/genre --heldout runs/demos/passages-heldout.jsonl

The model's control template (e.g. "<genre={genre}>") names the field of the held-out passages
(`shakespeare_tasks.py passages --task-out`, never trained on) that gives each passage its code.
Two measurements:
1. Loss of each passage (nats per token, the code's own tokens not counted) after its own code,
   against after each other code. If the codes carry nothing, the two are equal. Picking the code
   that gives the lowest loss also classifies the passage (Bayes' rule with a uniform prior): the
   accuracy of that guess is reported against chance (1 / number of codes).
2. Samples generated after each code (the same random numbers for every code), with the share of
   their lines that are speaker headings ("HAMLET." alone on a line): plays have them, poems do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

import arlm
from shakespeare_tasks import SPEAKER  # (this folder: a speaker heading, "HAMLET." alone on a line)


@torch.inference_mode()
def passage_losses(lm, codes: list[str], text: str) -> list[float]:
    """Mean loss of ``text``'s tokens after each code, starting a document as prepare wrote them."""
    rows, starts = [], []
    for code in codes:
        ids = lm.encode_prompt(text, control=code)  # [end-of-text] + code + text
        starts.append(len(lm.encode_prompt("", control=code)))
        rows.append(ids[:lm.block_size])
    T = max(len(r) for r in rows)
    x = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=lm.device)
    logits, _ = lm.model(x)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, x[:, 1:, None]).squeeze(-1)  # (N, T-1)
    out = []
    for i, (r, s) in enumerate(zip(rows, starts)):
        out.append(-float(logp[i, s - 1:len(r) - 1].mean()))  # predictions of tokens s..len(r)-1: the text's
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--heldout", required=True, help="JSONL of passages not trained on: {text, FIELD}")
    p.add_argument("--per-code", type=int, default=10, help="held-out passages scored per code")
    p.add_argument("--sample-values", default="",
                   help="comma-separated field values to generate from (default: all, when there are at most 6)")
    p.add_argument("--samples", type=int, default=20, help="samples per code")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--json-out", help="write the figures here")
    args = p.parse_args()

    lm = arlm.load(args.model)
    template = lm.info.data.get("control")
    known = lm.info.data.get("controls")
    if not template or not known:
        raise SystemExit(f"{args.model} was not trained with control codes (arlm prepare --control)")
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if len(fields) != 1:
        raise SystemExit(f"control template {template!r}: this script measures templates with one field")
    field = fields[0]
    rows = [json.loads(line) for line in Path(args.heldout).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_value = defaultdict(list)
    for r in rows:
        by_value[r[field]].append(r["text"])
    values = sorted(by_value)
    codes = [template.format(**{field: v}) for v in values]
    missing = [c for c in codes if c not in known]
    if missing:
        raise SystemExit(f"codes not seen in training: {missing[:5]}")

    own, other, hits, n = [], [], 0, 0
    per_value = {}
    for vi, v in enumerate(values):
        mine = []
        for text in by_value[v][:args.per_code]:
            losses = passage_losses(lm, codes, text)
            own.append(losses[vi])
            other.append(statistics.mean(x for j, x in enumerate(losses) if j != vi))
            mine.append(losses[vi] - other[-1])
            hits += min(range(len(codes)), key=losses.__getitem__) == vi
            n += 1
        per_value[v] = statistics.mean(mine)
    result = {
        "passages": n, "codes": len(codes),
        "loss_own_code": round(statistics.mean(own), 4),
        "loss_other_codes": round(statistics.mean(other), 4),
        "accuracy": round(hits / n, 4), "chance": round(1 / len(codes), 4),
        "own_minus_other": {v: round(x, 4) for v, x in per_value.items()},
    }
    print(f"{n} held-out passages, {len(codes)} codes ({template})")
    print(f"loss after the passage's own code: {result['loss_own_code']:.4f} nats/token; "
          f"after another code (mean): {result['loss_other_codes']:.4f}")
    print("own minus other, per code: " + ", ".join(f"{v} {x:+.4f}" for v, x in per_value.items()))
    print(f"the code with the lowest loss names the passage's {field} for {hits}/{n} passages "
          f"({100 * hits / n:.1f}%; chance {100 / len(codes):.1f}%)")

    samples = {}
    chosen = [s for s in args.sample_values.split(",") if s] or (values if len(values) <= 6 else [])
    for v in chosen:
        code = template.format(**{field: v})
        texts = lm.generate([""] * args.samples, control=code, max_new_tokens=args.max_new_tokens,
                            temperature=0.8, seed=0)
        lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
        share = sum(bool(SPEAKER.match(ln.strip())) for ln in lines) / max(1, len(lines))
        samples[v] = {"speaker_line_share": round(share, 4), "example": texts[0]}
        print(f"\n{code}: {100 * share:.1f}% of {len(lines)} generated lines are speaker headings; a sample:\n{texts[0]}")
    result["samples"] = samples
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
