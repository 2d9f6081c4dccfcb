"""Silver sentiment labels from VADER's lexicon (Hutto & Gilbert 2014, the ``vaderSentiment``
package) on the genre demo's passages (docs/demos/genres.py: split by play), with the pronouns each
passage uses as the group for `arlm probe groups` (docs/tasks.md).

    python docs/demos/sentiment.py --genre-dir runs/tasks --out-dir runs/tasks

writes, in --out-dir, sentiment-train.jsonl and sentiment-test.jsonl: {"text", "label", "group"}
for the passages whose VADER compound score is at least 0.5 ("positive") or at most -0.5
("negative"), the rest left out. The text scored is the speech without its speaker's name.
group: "he" when the passage uses he/him/his/himself and none of she/her/hers/herself, "she" the
reverse, "neither" for none of them and "both" for both. Labels are silver: VADER's, not a reader's.
Also genre-test-groups.jsonl: the genre demo's test passages with the same group, for probing the
genre classifier by group.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

HE = re.compile(r"\b(he|him|his|himself)\b", re.I)
SHE = re.compile(r"\b(she|her|hers|herself)\b", re.I)


def speech(text: str) -> str:
    """The passage without a leading speaker heading ("HAMLET.\\n")."""
    first, _, rest = text.partition("\n")
    return rest if rest and first.isupper() and first.endswith(".") else text


def group(text: str) -> str:
    he, she = bool(HE.search(text)), bool(SHE.search(text))
    return "both" if he and she else "he" if he else "she" if she else "neither"


def main() -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    ap = argparse.ArgumentParser()
    ap.add_argument("--genre-dir", default="runs/tasks")
    ap.add_argument("--out-dir", default="runs/tasks")
    args = ap.parse_args()
    vader = SentimentIntensityAnalyzer()
    for split in ("train", "test"):
        rows = [json.loads(l) for l in open(Path(args.genre_dir) / f"genre-{split}.jsonl", encoding="utf-8")]
        out = []
        for r in rows:
            body = speech(r["text"])
            score = vader.polarity_scores(body)["compound"]
            if abs(score) >= 0.5:
                out.append({"text": body, "label": "positive" if score > 0 else "negative", "group": group(body)})
        with open(Path(args.out_dir) / f"sentiment-{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
        labels = Counter(r["label"] for r in out)
        groups = Counter(r["group"] for r in out)
        print(f"{split}: {len(out):,} of {len(rows):,} passages labelled ({dict(labels)}); groups {dict(groups)}")
        if split == "test":
            with open(Path(args.out_dir) / "genre-test-groups.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({**r, "group": group(speech(r["text"]))}, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    main()
