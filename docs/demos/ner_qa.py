"""Token-classification and extractive-QA data from the bundled plays (docs/tasks.md), split by play as
the genre demo is (docs/demos/genres.py: the last two plays of each Folio group are the test plays).

    python docs/demos/ner_qa.py --out-dir runs/tasks

ner-{train,test}.jsonl  {"tokens", "tags"}: the lines of each speech, words split on spaces; a word is
    a name (B-PER, and I-PER for the next words of the same name) when, stripped of punctuation, it is
    one of the play's character names: the words of its speaker headings ("SIR TOBY." gives Toby),
    titles and numbers left out (SIR, LADY, KING, FIRST, ...), at least three letters, written with a
    capital in the line. Silver labels: a name the headings miss ("Denmark") is "O". Only plays whose
    headings are written out in capitals are used (Hamlet and Lear abbreviate theirs). Lines with no
    name are kept at one in four.
qa-{train,test}.jsonl   {"context", "question", "answer"}: a passage of two to four consecutive
    speeches with their headings (at most 240 characters), one starting at every speech, the question one line of one of its
    speeches, the answer that speech's speaker heading as written ("SIR TOBY"): "who says this?".

The script also prints the trivial baselines on the test plays: for ner, every capitalised word
that does not start its line tagged B-PER, and a gazetteer of the training plays' names; for qa, the
first heading of the context.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genres import PLAY_GENRES  # noqa: E402
from shakespeare_tasks import GENRE, MODERN  # noqa: E402

HEADING = re.compile(r"^([A-Z][A-Z' ]+[A-Z])\.$")
TITLES = {"SIR", "LADY", "LORD", "KING", "QUEEN", "DUKE", "DUCHESS", "PRINCE", "PRINCESS", "EARL", "FIRST", "SECOND",
          "THIRD", "FOURTH", "FIFTH", "OLD", "YOUNG", "ALL", "BOTH", "SERVANT", "MESSENGER", "CLOWN", "GENTLEMAN",
          "OFFICER", "CAPTAIN", "CARDINAL", "BISHOP", "ARCHBISHOP", "FRIAR", "MISTRESS", "MASTER", "OF", "THE", "AND",
          "DE", "LE", "LA", "SENATOR", "SOLDIER", "LORDS", "PAGE", "BOY", "NURSE", "GHOST", "CITIZEN", "MURDERER"}
STRIP = ".,;:!?'\"()[]-—"


def speeches(path: Path) -> list[tuple[str, list[str]]]:
    """(heading, lines) of every speech of a play whose headings are capitals on their own line."""
    out = []
    for para in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [l for l in para.strip("\n").split("\n") if l.strip()]
        if len(lines) >= 2 and HEADING.match(lines[0].strip()):
            out.append((HEADING.match(lines[0].strip()).group(1), [l.strip() for l in lines[1:] if not l.startswith("[")]))
    return out


def names_of(headings: set[str]) -> set[str]:
    return {w.capitalize() for h in headings for w in h.split() if w not in TITLES and len(w) >= 3 and w.isalpha()}


def tag_line(words: list[str], names: set[str]) -> list[str]:
    tags, prev = [], False
    for w in words:
        core = w.strip(STRIP)
        is_name = core in names
        tags.append(("I-PER" if prev else "B-PER") if is_name else "O")
        prev = is_name and not w.endswith(tuple(",.;:!?"))
    return tags


def qa_passages(play: list[tuple[str, list[str]]], rnd: random.Random) -> list[dict]:
    out = []
    for i in range(len(play)):  # a passage starting at every speech (passages overlap)
        group = play[i:i + rnd.randint(2, 4)]
        context = "\n\n".join(f"{h}.\n" + "\n".join(lines) for h, lines in group)
        if len(context) > 240 or len({h for h, _ in group}) < 2:
            continue
        h, lines = rnd.choice(group)
        line = rnd.choice(lines) if lines else ""
        if len(line) >= 12 and context.count(line) == 1:
            out.append({"context": context, "question": line, "answer": h})
    return out


def baselines(ner_test: list[dict], ner_train: list[dict], qa_test: list[dict]) -> None:
    from seqeval.metrics import f1_score

    gold = [r["tags"] for r in ner_test]
    caps = [["B-PER" if j and w.strip(STRIP)[:1].isupper() else "O" for j, w in enumerate(r["tokens"])] for r in ner_test]
    seen = {w.strip(STRIP) for r in ner_train for w, t in zip(r["tokens"], r["tags"]) if t != "O"}
    gaz = [tag_line(r["tokens"], seen) for r in ner_test]
    print(f"ner baselines on the test plays: capitalised-word entity F1 {100 * f1_score(gold, caps):.2f}, "
          f"training-names gazetteer {100 * f1_score(gold, gaz):.2f}")
    first = sum(r["context"].split(".\n", 1)[0] == r["answer"] for r in qa_test)
    print(f"qa baseline: the context's first heading, exact match {100 * first / len(qa_test):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default="runs/tasks")
    ap.add_argument("--test-plays", type=int, default=2)
    args = ap.parse_args()
    rnd = random.Random(0)
    held = [p for g in PLAY_GENRES for p in sorted(w for w, x in GENRE.items() if x == g)[-args.test_plays:]]
    data: dict[str, dict[str, list]] = {"train": {"ner": [], "qa": []}, "test": {"ner": [], "qa": []}}
    for work in sorted(w for w, g in GENRE.items() if g in PLAY_GENRES):
        play = speeches(MODERN / f"{work}.txt")
        if len(play) < 100:  # headings abbreviated (Hamlet, Lear): no names to read
            continue
        split = data["test" if work in held else "train"]
        names = names_of({h for h, _ in play})
        for _, lines in play:
            for line in lines:
                words = line.split()
                tags = tag_line(words, names)
                if words and (any(t != "O" for t in tags) or rnd.random() < 0.25):
                    split["ner"].append({"tokens": words, "tags": tags})
        split["qa"] += qa_passages(play, rnd)
    out = Path(args.out_dir)
    for part, tasks in data.items():
        for task, rows in tasks.items():
            with open(out / f"{task}-{part}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            print(f"{task}-{part}: {len(rows):,} examples")
    baselines(data["test"]["ner"], data["train"]["ner"], data["test"]["qa"])


if __name__ == "__main__":
    main()
