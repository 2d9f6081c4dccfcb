"""Next-line completion task from held-out Python files (docs/finetuning.md, code completion demo).

    python docs/demos/code_task.py --data runs/demos/code-data --out runs/demos/code-task.jsonl

`arlm prepare` holds out the end of the corpus (files in sorted order) for validation. This takes the
files that lie wholly in that held-out part, picks lines at random (not blank, not comments), and
writes {prompt: the file up to that line (its last --context characters, from a line start),
reference: the line}. Score with `arlm eval --task ... --metric exact --stop "\\n" --token-healing`:
each prompt ends with a newline, but a BPE trained on code merges a newline with the indentation
after it, so without token healing the model is asked to continue a token boundary it never saw.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def held_out_files(data: Path) -> list[Path]:
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    files = [Path(s) for s in meta["sources"]]
    sizes = [len(f.read_text(encoding="utf-8")) for f in files]
    start, boundary, out = 0, (1 - meta["val_fraction"]) * sum(sizes), []
    for f, n in zip(files, sizes):  # characters stand in for tokens: a file starting past the cut is held out
        if start >= boundary:
            out.append(f)
        start += n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the prepared code corpus (arlm prepare ... --glob '*.py')")
    p.add_argument("--out", required=True)
    p.add_argument("--examples", type=int, default=300)
    p.add_argument("--context", type=int, default=600, help="characters of the file before the line")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    candidates = []
    files = held_out_files(Path(args.data))
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        for i in range(5, len(lines)):
            text = lines[i].strip()
            if text and not text.startswith("#"):
                candidates.append((f, lines, i))
    rows = []
    for f, lines, i in rng.sample(candidates, min(args.examples, len(candidates))):
        before = "".join(lines[:i])
        if len(before) > args.context:  # cut at a line start
            cut = before.find("\n", len(before) - args.context)
            before = before[cut + 1:]
        rows.append({"prompt": before, "reference": lines[i].rstrip("\n"), "file": f.name})
    with open(args.out, "w", encoding="utf-8") as out:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} next-line examples from {len(files)} held-out files ({', '.join(f.name for f in files)}) -> {args.out}")


if __name__ == "__main__":
    main()
