"""Build the fine-tuning demos' data from the bundled plays (docs/finetuning.md).

    python docs/demos/shakespeare_tasks.py dialogue --out runs/demos/dialogue.jsonl
    python docs/demos/shakespeare_tasks.py modernize --out runs/demos/modernize.jsonl --task-out runs/demos/modernize-task.jsonl

dialogue: each pair of consecutive speeches by different speakers in a scene becomes a chat example
    (user: the previous speech, assistant: the reply).
modernize: speeches of the First Folio (1623 spelling, data/shakespeare_folio) aligned with the same
    speeches in the modern-spelling edition (data/shakespeare), as text-to-text pairs in T5's prefix
    style ("modernize: <folio text>" -> modern text). The last plays (in file-name order) are held out
    as a task file for `arlm eval --task`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODERN, FOLIO = ROOT / "data" / "shakespeare", ROOT / "data" / "shakespeare_folio"
SPEAKER = re.compile(r"^[A-Z][A-Za-z'. -]{0,24}\.$")  # "Ham." / "First Clown." on its own line
HEADING = re.compile(r"^(ACT|Scene|SCENE)\b")
FOLIO_SPEECH = re.compile(r"^ {2,4}([A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*)?)\. (.*)$")  # "  Barnardo. Who's there?"


def clean(text: str) -> str:
    text = re.sub(r"\[[^\]]*\]", " ", text)  # stage directions
    return re.sub(r"\s+", " ", text).strip()


def modern_scenes(path: Path) -> list[list[tuple[str, str]]]:
    """Scenes of (speaker, speech) from a modern-spelling play."""
    scenes, cur = [], []
    for para in path.read_text(encoding="utf-8").split("\n\n"):
        lines = para.strip("\n").split("\n")
        if HEADING.match(lines[0]):
            if cur:
                scenes.append(cur)
            cur = []
        elif len(lines) > 1 and SPEAKER.match(lines[0].strip()):
            speech = clean(" ".join(lines[1:]))
            if speech:
                cur.append((lines[0].strip(), speech))
    return scenes + ([cur] if cur else [])


def folio_speeches(path: Path) -> list[str]:
    """Speeches of a First Folio play: an indented "Name. text" line and the lines that follow it."""
    speeches, cur = [], None
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
        m = FOLIO_SPEECH.match(line)
        if m:
            if cur:
                speeches.append(clean(cur))
            cur = m.group(2)
        elif cur is not None and line.strip() and not line.startswith(" ") and not re.match(r"^(Enter|Exit|Exeunt)\b", line):
            cur += " " + line
        elif cur is not None and not line.strip():
            speeches.append(clean(cur))
            cur = None
    return [s for s in speeches + ([clean(cur)] if cur else []) if s]


def key(text: str) -> str:
    """Spelling-insensitive form for alignment: Folio u/v, i/j and final -e variants fold together."""
    t = re.sub(r"[^a-z ]", "", text.lower().replace("v", "u").replace("j", "i"))
    return " ".join(w.rstrip("e") for w in t.split())


def dialogue(max_chars: int) -> list[dict]:
    out = []
    for play in sorted(MODERN.glob("*.txt")):
        for scene in modern_scenes(play):
            for (s1, a), (s2, b) in zip(scene, scene[1:]):
                if s1 != s2 and len(a) <= max_chars and len(b) <= max_chars:
                    out.append({"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}],
                                "play": play.stem})
    return out


def modernize(max_chars: int, min_ratio: float = 0.6) -> list[dict]:
    out = []
    for folio in sorted(FOLIO.glob("*.txt")):
        modern = [s for scene in modern_scenes(MODERN / folio.name) for _, s in scene]
        old = folio_speeches(folio)
        ko, km = [key(s) for s in old], [key(s) for s in modern]
        matcher = difflib.SequenceMatcher(None, [k[:20] for k in ko], [k[:20] for k in km], autojunk=False)
        for block in matcher.get_matching_blocks():
            for i in range(block.size):
                a, b = old[block.a + i], modern[block.b + i]
                if len(a) <= max_chars and len(b) <= max_chars and a != b \
                        and difflib.SequenceMatcher(None, ko[block.a + i], km[block.b + i]).ratio() >= min_ratio:
                    out.append({"prompt": f"modernize: {a}\n", "completion": b, "play": folio.stem})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("dialogue", "modernize"))
    p.add_argument("--out", required=True, help="JSONL of training examples")
    p.add_argument("--task-out", help="modernize: JSONL {prompt, reference} of the held-out plays")
    p.add_argument("--held-out", type=int, default=3, help="modernize: plays (the last in file-name order) kept for --task-out")
    p.add_argument("--max-chars", type=int, default=100, help="longest speech kept (both sides must fit the context)")
    p.add_argument("--vocab-from", help="a prepared data folder (char tokenizer): skip examples with other characters")
    args = p.parse_args()
    rows = dialogue(args.max_chars) if args.kind == "dialogue" else modernize(args.max_chars)
    if args.vocab_from:
        chars = set(json.loads((Path(args.vocab_from) / "tokenizer.json").read_text(encoding="utf-8"))["chars"])
        rows = [r for r in rows if set(json.dumps(r, ensure_ascii=False)) <= chars | set('{}[]":,\\')]
    held = sorted({r["play"] for r in rows})[-args.held_out:] if args.task_out else []
    train = [r for r in rows if r["play"] not in held]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in train:
            f.write(json.dumps({k: v for k, v in r.items() if k != "play"}, ensure_ascii=False) + "\n")
    print(f"{len(train)} examples -> {args.out}")
    if args.task_out:
        task = [r for r in rows if r["play"] in held]
        with open(args.task_out, "w", encoding="utf-8") as f:
            for r in task:
                f.write(json.dumps({"prompt": r["prompt"], "reference": r["completion"]}, ensure_ascii=False) + "\n")
        print(f"{len(task)} held-out examples ({', '.join(held)}) -> {args.task_out}")


if __name__ == "__main__":
    main()
