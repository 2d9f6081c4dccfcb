"""Build the fine-tuning demos' data from the bundled plays (docs/finetuning.md).

    python docs/demos/shakespeare_tasks.py dialogue --out runs/demos/dialogue.jsonl
    python docs/demos/shakespeare_tasks.py modernize --out runs/demos/modernize.jsonl --task-out runs/demos/modernize-task.jsonl
    python docs/demos/shakespeare_tasks.py passages --out runs/demos/passages.jsonl --task-out runs/demos/passages-heldout.jsonl

dialogue: each pair of consecutive speeches by different speakers in a scene becomes a chat example
    (user: the previous speech, assistant: the reply).
modernize: speeches of the First Folio (1623 spelling, data/shakespeare_folio) aligned with the same
    speeches in the modern-spelling edition (data/shakespeare), as text-to-text pairs in T5's prefix
    style ("modernize: <folio text>" -> modern text). The last plays (in file-name order) are held out
    as a task file for `arlm eval --task`.
passages: every work (plays and poems) cut into passages of whole lines that fit the context, as
    JSONL {text, work, genre} for `arlm prepare --control "<work={work}>"` (the base model of the
    demos, conditioned on its work as CTRL is on its control codes) or "<genre={genre}>" (comedy,
    history, tragedy as the First Folio groups the plays, or poem). The last --held-out-share of each work's
    passages go to --task-out, never trained on, so that the control codes can be measured per work;
    the rest are shuffled, so that the prepared validation split (the corpus tail) mixes every work.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODERN, FOLIO = ROOT / "data" / "shakespeare", ROOT / "data" / "shakespeare_folio"
SPEAKER = re.compile(r"^[A-Z][A-Za-z'. -]{0,24}\.$")  # "Ham." / "First Clown." on its own line
HEADING = re.compile(r"^(ACT|Scene|SCENE)\b")
FOLIO_SPEECH = re.compile(r"^ {2,4}([A-Z][A-Za-z'-]*(?: [A-Z][A-Za-z'-]*)?)\. (.*)$")  # "  Barnardo. Who's there?"


# The First Folio's three kinds (1623), and the poems; Pericles, left out of the Folio, is with the comedies.
GENRES = {
    "comedy": "alls_well_that_ends_well as_you_like_it comedy_of_errors loves_labours_lost measure_for_measure "
              "merchant_of_venice merry_wives_of_windsor midsummer_nights_dream much_ado_about_nothing pericles "
              "taming_of_the_shrew twelfth_night two_gentlemen_of_verona winters_tale",
    "history": "henry_iv_part_1 henry_iv_part_2 henry_v henry_vi_part_1 henry_vi_part_2 henry_vi_part_3 henry_viii "
               "john richard_ii richard_iii",
    "tragedy": "antony_and_cleopatra coriolanus cymbeline hamlet julius_caesar lear romeo_and_juliet timon_of_athens "
               "tragedy_of_titus_andronicus troilus_and_cressida",
    "poem": "lovers_complaint passionate_pilgrim phoenix_and_the_turtle rape_of_lucrece sonnets",
}
GENRE = {work: genre for genre, works in GENRES.items() for work in works.split()}


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


def modernize(max_chars: int, min_ratio: float = 0.6, to_folio: bool = False) -> list[dict]:
    """Aligned (Folio, modern) speeches; ``to_folio``: the other way, "folio: <modern>" -> Folio text."""
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
                    src, tgt, verb = (b, a, "folio") if to_folio else (a, b, "modernize")
                    out.append({"prompt": f"{verb}: {src}\n", "completion": tgt, "play": folio.stem})
    return out


def passages(max_chars: int) -> list[dict]:
    """Consecutive paragraphs joined while they fit ``max_chars``; a longer paragraph is cut between lines."""
    out = []
    for work in sorted(MODERN.glob("*.txt")):
        pieces = []
        for para in work.read_text(encoding="utf-8").split("\n\n"):
            lines, cur = [ln for ln in para.strip("\n").split("\n") if len(ln) <= max_chars], ""
            for ln in lines:
                if cur and len(cur) + 1 + len(ln) > max_chars:
                    pieces.append(cur)
                    cur = ""
                cur = f"{cur}\n{ln}" if cur else ln
            if cur:
                pieces.append(cur)
        text = ""
        for piece in pieces:
            if text and len(text) + 2 + len(piece) > max_chars:
                out.append({"text": text, "work": work.stem, "genre": GENRE.get(work.stem, "other")})
                text = ""
            text = f"{text}\n\n{piece}" if text else piece
        if text:
            out.append({"text": text, "work": work.stem, "genre": GENRE.get(work.stem, "other")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=("dialogue", "modernize", "passages"))
    p.add_argument("--out", required=True, help="JSONL of training examples")
    p.add_argument("--task-out", help="modernize: JSONL {prompt, reference} of the held-out plays; "
                   "passages: JSONL {text, work, genre} of the held-out passages")
    p.add_argument("--held-out-share", type=float, default=0.05, help="passages: share of each work held out")
    p.add_argument("--seed", type=int, default=0, help="passages: shuffle seed")
    p.add_argument("--held-out", type=int, default=3, help="modernize: plays (the last in file-name order) kept for --task-out")
    p.add_argument("--max-chars", type=int, help="longest speech kept (both sides must fit the context; "
                   "default 100), or longest passage (default 220: a 256-character context holds it and its code)")
    p.add_argument("--held-out-plays", help="modernize: the plays to hold out, comma-separated file stems "
                   "(e.g. hamlet,lear); default: the last --held-out in file-name order")
    p.add_argument("--to-folio", action="store_true", help="modernize: the other way, modern spelling -> the Folio's")
    p.add_argument("--vocab-from", help="a prepared data folder (char tokenizer): skip examples with other characters")
    args = p.parse_args()
    if args.kind == "passages":
        return write_passages(passages(args.max_chars or 220), args)
    rows = dialogue(args.max_chars or 100) if args.kind == "dialogue" else modernize(args.max_chars or 100,
                                                                                     to_folio=args.to_folio)
    if args.vocab_from:
        chars = set(json.loads((Path(args.vocab_from) / "tokenizer.json").read_text(encoding="utf-8"))["chars"])
        rows = [r for r in rows if set(json.dumps(r, ensure_ascii=False)) <= chars | set('{}[]":,\\')]
    plays = sorted({r["play"] for r in rows})
    held = plays[-args.held_out:] if args.task_out else []
    if args.task_out and args.held_out_plays:
        held = args.held_out_plays.split(",")
        unknown = [h for h in held if h not in plays]
        if unknown:
            p.error(f"--held-out-plays: no aligned speeches for {', '.join(unknown)}; choose among {', '.join(plays)}")
    train = [r for r in rows if r["play"] not in held]
    write_jsonl(args.out, [{k: v for k, v in r.items() if k != "play"} for r in train])
    print(f"{len(train)} examples -> {args.out}")
    if args.task_out:
        task = [r for r in rows if r["play"] in held]
        write_jsonl(args.task_out, [{"prompt": r["prompt"], "reference": r["completion"]} for r in task])
        if args.kind == "modernize":  # the bar a model must clear: the Folio text returned unchanged
            from arlm.eval.tasks import score

            copies = [r["prompt"].split(": ", 1)[1].rstrip("\n") for r in task]
            refs = [r["completion"] for r in task]
            print(f"copy baseline: BLEU {score('bleu', copies, refs)['bleu']:.2f}, chrF {score('chrf', copies, refs)['chrf']:.2f}")
        print(f"{len(task)} held-out examples ({', '.join(held)}) -> {args.task_out}")


def write_jsonl(path: str, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_passages(rows: list[dict], args: argparse.Namespace) -> None:
    train, held = [], []
    for work in sorted({r["work"] for r in rows}):
        mine = [r for r in rows if r["work"] == work]
        n = max(1, round(len(mine) * args.held_out_share)) if args.task_out else 0
        train += mine[:len(mine) - n]
        held += mine[len(mine) - n:]
    random.Random(args.seed).shuffle(train)
    write_jsonl(args.out, train)
    print(f"{len(train)} passages -> {args.out}")
    if args.task_out:
        write_jsonl(args.task_out, held)
        print(f"{len(held)} held-out passages (the end of each of {len({r['work'] for r in held})} works) -> {args.task_out}")


if __name__ == "__main__":
    main()
