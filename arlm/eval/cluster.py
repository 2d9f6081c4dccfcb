"""Unsupervised views of a corpus, each scored against known labels where there are some:

* k-means (scikit-learn's ``KMeans``, k-means++ starts, 10 restarts) on a model's text vectors
  (arlm/eval/embed.py), L2-normalised first so that distance follows cosine similarity, the usual
  measure between sentence embeddings;
* LDA topics (Blei et al. 2003; scikit-learn's ``LatentDirichletAllocation``, online variational Bayes)
  on the texts' word counts, English stop words and words in more than half the texts removed; a
  text's topic is its most probable one;
* agreement of either grouping with the labels: the adjusted Rand index (Hubert & Arabie 1985; 0 for
  a random grouping, 1 for the labels themselves) and normalised mutual information, by scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from arlm.errors import UserError


def kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Each row's cluster (0 .. k-1)."""
    from sklearn.cluster import KMeans

    if not 2 <= k <= len(vectors):
        raise UserError(f"--clusters {k}: k-means needs 2 to {len(vectors)} clusters (one per text at most)")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)


def lda(texts: list[str], k: int, seed: int = 0, top_words: int = 10) -> tuple[np.ndarray, list[list[str]]]:
    """Each text's most probable topic, and each topic's most probable words."""
    from sklearn.decomposition import LatentDirichletAllocation
    from sklearn.feature_extraction.text import CountVectorizer

    if not 2 <= k <= len(texts):
        raise UserError(f"--topics {k}: LDA needs 2 to {len(texts)} topics (one per text at most)")
    vectorizer = CountVectorizer(stop_words="english", max_df=0.5, min_df=2 if len(texts) >= 20 else 1)
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # every word a stop word, or in more than half the texts
        raise UserError("the texts have no words left for topics once English stop words and words in more than "
                        "half of the texts are removed; give longer or more varied texts") from None
    model = LatentDirichletAllocation(n_components=k, random_state=seed, learning_method="batch")
    doc_topics = model.fit_transform(counts)
    vocab = vectorizer.get_feature_names_out()
    words = [[str(vocab[i]) for i in np.argsort(-row)[:top_words]] for row in model.components_]
    return doc_topics.argmax(1), words


def agreement(found: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The adjusted Rand index and normalised mutual information of a grouping with the labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(labels, found)), "nmi": float(normalized_mutual_info_score(labels, found))}
