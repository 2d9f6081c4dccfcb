"""``arlm embed``: a vector per text from a model's hidden states, written as .npy or Parquet, with
k-means clusters and LDA topics over the corpus scored against known labels (arlm/eval/cluster.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from arlm.cli.flags import add_verb, emit_json, load_model, load_options, options
from arlm.config import EmbedConfig, LoadConfig
from arlm.errors import UserError


def read_texts(cfg: EmbedConfig) -> tuple[list[str], list[str] | None]:
    """The texts, and their labels when every JSONL record has one."""
    from arlm.io.files import read_jsonl, read_text_file

    if Path(cfg.input).suffix.lower() == ".jsonl":
        records = read_jsonl(cfg.input)
        texts, labels = [], []
        for n, rec in records:
            if not isinstance(rec, dict) or not isinstance(rec.get(cfg.field), str) or not rec[cfg.field].strip():
                raise UserError(f"{cfg.input} line {n}: expected an object with non-empty text under {cfg.field!r} "
                                f"(--field names the key)")
            texts.append(rec[cfg.field])
            label = rec.get(cfg.label_field)
            labels.append(None if label is None or isinstance(label, (dict, list)) else str(label))
        have = [x is not None for x in labels]
        if any(have) and not all(have):
            raise UserError(f"{cfg.input} line {records[have.index(False)][0]}: no {cfg.label_field!r}, which other lines "
                            f"have; label every text or none")
        out_labels = labels if all(have) else None
    else:
        texts = [line for line in read_text_file(cfg.input).splitlines() if line.strip()]
        out_labels = None
    if not texts:
        raise UserError(f"{cfg.input} holds no texts")
    if len(texts) > cfg.max_texts:
        raise UserError(f"{cfg.input} holds {len(texts):,} texts, more than --max-texts {cfg.max_texts:,}; "
                        f"split it or raise the limit")
    return texts, out_labels


def cmd_embed(args: argparse.Namespace) -> int:
    from arlm.eval.cluster import agreement, kmeans, lda
    from arlm.io.arrays import SUFFIXES, write_vectors
    from arlm.io.outputs import Output, claim_file

    cfg = options(EmbedConfig, args, "embed options")
    texts, labels = read_texts(cfg)
    for name, k in (("clusters", cfg.clusters), ("topics", cfg.topics)):
        if k > len(texts):
            raise UserError(f"--{name} {k} is more than the {len(texts)} texts; lower it")
    if cfg.out:
        claim_file(cfg.out, "--out", Output(SUFFIXES[Path(cfg.out).suffix.lower()], "embed"),
                   inputs=[("input", cfg.input)], input_folders=[("model folder", load_options(args).model)],
                   overwrite=cfg.overwrite, replace_own=False)
    m = load_model(args)
    vectors = m.embed(texts, cfg.pooling, cfg.batch_size)
    result: dict[str, Any] = {"model": m.info.path, "input": cfg.input, "texts": len(texts), "dim": int(vectors.shape[1]),
                              "pooling": cfg.pooling}
    columns: dict[str, list[Any]] = {"text": texts}
    if labels is not None:
        columns["label"] = labels
        result["labels"] = len(set(labels))
    if cfg.clusters:
        found = kmeans(vectors, cfg.clusters, cfg.seed)
        columns["cluster"] = found.tolist()
        result["kmeans"] = {"k": cfg.clusters, **(agreement(found, labels) if labels else {})}
    if cfg.topics:
        found, words = lda(texts, cfg.topics, cfg.seed)
        columns["topic"] = found.tolist()
        result["lda"] = {"k": cfg.topics, "top_words": words, **(agreement(found, labels) if labels else {})}
    if cfg.out:
        write_vectors(cfg.out, vectors, columns)
        result["out"] = cfg.out
    if args.json:
        emit_json(result)
        return 0
    print(f"{cfg.input}: {len(texts):,} texts -> {vectors.shape[1]}-dimensional vectors ({cfg.pooling} pooling)"
          + (f", {result['labels']} labels" if labels else ""))
    for name, key in (("k-means", "kmeans"), ("LDA", "lda")):
        if key in result:
            r = result[key]
            scores = f": adjusted Rand index {r['ari']:.3f}, NMI {r['nmi']:.3f} against the labels" if "ari" in r else ""
            print(f"{name}, {r['k']} {'clusters' if key == 'kmeans' else 'topics'}{scores}")
    for i, words in enumerate(result.get("lda", {}).get("top_words", [])):
        print(f"  topic {i}: {' '.join(words)}")
    if cfg.out:
        print(f"vectors: {cfg.out}")
    return 0


def add_verbs(sub) -> None:
    add_verb(sub, "embed", cmd_embed, "a vector per text from a model's hidden states; k-means clusters, LDA topics",
             LoadConfig, EmbedConfig,
             description="Embed each text of --input with a model (the mean or last of its tokens' final hidden "
                         "states), write the vectors (.npy or Parquet), and group the corpus: k-means on the vectors, "
                         "LDA topics on the word counts, each scored against the texts' labels (adjusted Rand index, "
                         "NMI) when the JSONL has them.")
