"""Genre of a passage (comedy, history or tragedy, as the First Folio of 1623 groups the plays), from
the bundled modern-spelling plays (docs/tasks.md), split by play, and the TF-IDF + logistic-regression
baseline on the same split.

    python docs/demos/genres.py --out-dir runs/tasks

writes, in --out-dir:
  genre-train.jsonl, genre-test.jsonl  {"text", "label"}: passages of whole lines of up to --max-chars
      characters; the test plays (--test-plays per genre, the last in file-name order) are in no
      training file;
  genre-corpus.jsonl  {"text"}: the training plays' passages, unlabelled, for pre-training a
      language model that has never read a test play (`arlm prepare`);
and prints the baseline's accuracy and macro-F1 on the test plays (scikit-learn: word and word-pair
TF-IDF, sublinear term frequencies, a logistic regression with balanced class weights).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shakespeare_tasks import GENRE, passages, write_jsonl  # noqa: E402

PLAY_GENRES = ("comedy", "history", "tragedy")


def split(rows: list[dict], test_plays: int) -> tuple[list[dict], list[dict], list[str]]:
    """(train, test, the test plays): the last ``test_plays`` plays of each genre in file-name order are tested."""
    held = []
    for genre in PLAY_GENRES:
        plays = sorted(w for w, g in GENRE.items() if g == genre)
        held += plays[-test_plays:]
    train = [r for r in rows if r["genre"] in PLAY_GENRES and r["work"] not in held]
    test = [r for r in rows if r["genre"] in PLAY_GENRES and r["work"] in held]
    return train, test, held


def baseline(train: list[dict], test: list[dict]) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2),
                          LogisticRegression(max_iter=2000, class_weight="balanced", C=4.0))
    model.fit([r["text"] for r in train], [r["genre"] for r in train])
    predicted = model.predict([r["text"] for r in test])
    gold = [r["genre"] for r in test]
    return {"accuracy": 100 * accuracy_score(gold, predicted), "macro_f1": 100 * f1_score(gold, predicted, average="macro")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--max-chars", type=int, default=240, help="longest passage (the model's 256-character context holds it)")
    p.add_argument("--test-plays", type=int, default=2, help="plays of each genre held out for testing")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the training passages")
    args = p.parse_args()
    out = Path(args.out_dir)
    train, test, held = split(passages(args.max_chars), args.test_plays)
    # a character vocabulary learnt from the training plays cannot encode a symbol only a test play has
    chars = {c for r in train for c in r["text"]}
    dropped = [r for r in test if not set(r["text"]) <= chars]
    test = [r for r in test if set(r["text"]) <= chars]
    random.Random(args.seed).shuffle(train)
    write_jsonl(str(out / "genre-train.jsonl"), [{"text": r["text"], "label": r["genre"]} for r in train])
    write_jsonl(str(out / "genre-test.jsonl"), [{"text": r["text"], "label": r["genre"]} for r in test])
    write_jsonl(str(out / "genre-corpus.jsonl"), [{"text": r["text"]} for r in train])
    counts = {g: (sum(r["genre"] == g for r in train), sum(r["genre"] == g for r in test)) for g in PLAY_GENRES}
    print(f"{len(train)} training passages, {len(test)} test passages from {', '.join(held)} "
          f"({len(dropped)} left out: characters the training plays do not have)")
    print("per genre (train, test): " + ", ".join(f"{g} {a}/{b}" for g, (a, b) in counts.items()))
    scores = baseline(train, test)
    print(f"TF-IDF + logistic regression on the test plays: accuracy {scores['accuracy']:.2f}, "
          f"macro-F1 {scores['macro_f1']:.2f}")


if __name__ == "__main__":
    main()
