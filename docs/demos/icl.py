"""In-context learning as task identification (Xie et al. 2021, "An Explanation of In-context
Learning as Implicit Bayesian Inference"), on Shakespeare's words: the few-shot demo of docs/tasks.md.

Each training document applies one word transformation, chosen at random per document, to 4 to 12
words, laid out as ``arlm eval --few-shot`` lays out demonstrations (``word: answer`` pairs separated
by blank lines). A model trained on them cannot tell from one prompt (``word:``) which
transformation is wanted; the demonstrations before it say. The evaluation files ask for each
transformation in turn, on words that never occur in training, with every transformation's output
as the choices (4 choices: chance is 25%).

Words: the lower-case words of 4 to 9 letters in the bundled plays; a word goes to the evaluation
set when its CRC-32 is divisible by 5 (about a fifth), else to training.

    python docs/demos/icl.py OUT_DIR       # OUT_DIR/corpus/*.txt, OUT_DIR/eval-<task>.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = {
    "upper": str.upper,
    "capitalize": str.capitalize,
    "reverse": lambda w: w[::-1],
    "first3": lambda w: w[:3],
}


def words() -> tuple[list[str], list[str]]:
    seen: set[str] = set()
    for path in sorted((ROOT / "data" / "shakespeare").glob("*.txt")):
        seen.update(re.findall(r"\b[a-z]{4,9}\b", path.read_text(encoding="utf-8")))
    ordered = sorted(seen)
    held = [w for w in ordered if zlib.crc32(w.encode()) % 5 == 0]
    return [w for w in ordered if zlib.crc32(w.encode()) % 5 != 0], held


def document(rnd: random.Random, pool: list[str]) -> str:
    f = TASKS[rnd.choice(sorted(TASKS))]
    return "".join(f"{w}: {f(w)}\n\n" for w in rnd.sample(pool, rnd.randint(4, 12)))


def main(out: Path, docs: int = 60_000, per_task: int = 200) -> None:
    train, held = words()
    rnd = random.Random(0)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "corpus" / "icl.txt").write_text("".join(document(rnd, train) for _ in range(docs)), encoding="utf-8")
    names = sorted(TASKS)
    for name in names:
        with open(out / f"eval-{name}.jsonl", "w", encoding="utf-8") as f:
            for w in rnd.sample(held, per_task):
                choices = [TASKS[n](w) for n in names]
                if len(set(choices)) < len(choices):  # e.g. a 3-letter prefix equal to another output
                    continue
                f.write(json.dumps({"prompt": f"{w}:", "choices": choices, "answer": names.index(name)}) + "\n")
    print(f"{len(train):,} training words, {len(held):,} held out; {docs:,} documents; "
          f"{per_task} evaluation examples per task at most")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
