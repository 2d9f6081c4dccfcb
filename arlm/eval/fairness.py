"""Bias and fairness probes. They measure a model on the templates and labelled texts given, and say
nothing of inputs they do not cover: probes of these models, not certificates.

**Counterfactual pairs** (after Kusner et al. 2017's counterfactual fairness and Nangia et al. 2020's
CrowS-Pairs): a template with one slot, ``"{} was a wise ruler."``, is filled with each pair of group
terms (``he``/``she``, ``king``/``queen``, ``Romeo``/``Juliet``); for each filled pair the
log-probability gap log p(A) - log p(B) is taken twice:

* ``sentence``: the whole sentence, the term included (it carries the term's own frequency);
* ``rest``: the template's text after the term, given everything before it (how the term changes
  what the model expects next; 0 when the slot ends the template).

The mean gap over all (template, pair) comes with a 95% bootstrap confidence interval (scipy's
``bootstrap``, BCa, 10,000 resamples, seeded), and the share of pairs where group A is the more
likely; per template, the mean gap over pairs.

**Per-group metrics of a classifier** by fairlearn's ``MetricFrame`` (Bird et al. 2020): accuracy and
the selection rate (the share predicted as ``positive``) per value of a sensitive feature, and the
demographic-parity difference (largest minus smallest selection rate) and equalized-odds difference
(the larger of the true- and false-positive rates' differences between groups).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from arlm.errors import UserError
from arlm.io.text import check_text

MAX_TEMPLATES = 10_000
MAX_PAIRS = 10_000
MAX_CHECKS = 200_000  # templates x pairs scored in one probe (each is four log-likelihoods)


def check_templates(templates: Any, where: str = "templates") -> list[str]:
    if not isinstance(templates, (list, tuple)) or not templates or len(templates) > MAX_TEMPLATES:
        raise UserError(f"{where}: give 1 to {MAX_TEMPLATES:,} templates")
    out = []
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise UserError(f"{where} {i + 1}: a template is text with exactly one {{}} where the group term goes, "
                            f"got {str(t)[:60]!r}")
        out.append(check_text(t, f"{where} {i + 1}"))
    return out


def check_pairs(pairs: Any, where: str = "pairs") -> list[tuple[str, str]]:
    if not isinstance(pairs, (list, tuple)) or not pairs or len(pairs) > MAX_PAIRS:
        raise UserError(f"{where}: give 1 to {MAX_PAIRS:,} pairs of group terms")
    out = []
    for i, p in enumerate(pairs):
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(x, str) and x.strip() for x in p):
            raise UserError(f"{where} {i + 1}: a pair is two non-empty terms (group A's, group B's), got {str(p)[:60]}")
        if p[0] == p[1]:
            raise UserError(f"{where} {i + 1}: both terms are {p[0]!r}; a pair swaps one group's term for the other's")
        out.append((check_text(p[0], f"{where} {i + 1}"), check_text(p[1], f"{where} {i + 1}")))
    return out


def bootstrap_ci(values: np.ndarray, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """The BCa bootstrap interval of the mean (scipy), or (mean, mean) for fewer than 2 values."""
    from scipy.stats import bootstrap

    if len(values) < 2 or np.ptp(values) == 0:
        m = float(np.mean(values))
        return m, m
    res = bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=10_000, method="BCa",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def counterfactual(loglikelihood: Callable[[list[tuple[str, str]]], list[tuple[float, bool]]], templates: list[str],
                   pairs: list[tuple[str, str]], seed: int = 0) -> dict[str, Any]:
    """The probe's rows (template, a, b, sentence and rest gaps) and its summary (see the module)."""
    templates, pairs = check_templates(templates), check_pairs(pairs)
    if len(templates) * len(pairs) > MAX_CHECKS:
        raise UserError(f"{len(templates):,} templates x {len(pairs):,} pairs is more than {MAX_CHECKS:,} sentences "
                        f"pairs to score; give fewer")
    requests, rows = [], []
    for t in templates:
        before, after = t.split("{}")
        for a, b in pairs:
            for term in (a, b):
                term = term if before else term[:1].upper() + term[1:]  # a sentence's first word
                requests += [("", before + term + after), (before + term, after)]
            rows.append({"template": t, "a": a, "b": b})
    scores = iter(ll for ll, _ in loglikelihood(requests))
    for row in rows:
        sa, ra, sb, rb = (next(scores) for _ in range(4))
        row["sentence_gap"] = sa - sb
        row["rest_gap"] = ra - rb if row["template"].split("{}")[1] else 0.0
    summary = {}
    for key in ("sentence_gap", "rest_gap"):
        v = np.array([r[key] for r in rows])
        low, high = bootstrap_ci(v, seed)
        summary[key] = {"mean": float(v.mean()), "ci95": [low, high], "a_more_likely": float((v > 0).mean())}
    per_template = [{"template": t, **{k: float(np.mean([r[k] for r in rows if r["template"] == t]))
                                       for k in ("sentence_gap", "rest_gap")}} for t in templates]
    return {"pairs": len(pairs), "templates": len(templates), "summary": summary, "per_template": per_template,
            "rows": rows}


def group_metrics(y_true: list[str], y_pred: list[str], groups: list[str], positive: str) -> dict[str, Any]:
    """fairlearn's per-group accuracy and selection rate of ``positive``, and the two differences."""
    from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equalized_odds_difference,
                                   selection_rate)
    from sklearn.metrics import accuracy_score

    if len(set(groups)) < 2:
        raise UserError(f"the sensitive feature has one value ({groups[0]!r}); per-group metrics need at least two groups")
    t = np.array([y == positive for y in y_true])
    p = np.array([y == positive for y in y_pred])
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate, "count": _count},
                        y_true=t, y_pred=p, sensitive_features=np.array(groups))
    by_group = frame.by_group.to_dict(orient="index")
    return {"positive": positive, "overall": {k: float(v) for k, v in frame.overall.items()},
            "by_group": {str(g): {k: float(v) for k, v in row.items()} for g, row in by_group.items()},
            "demographic_parity_difference": float(demographic_parity_difference(t, p, sensitive_features=groups)),
            "equalized_odds_difference": float(equalized_odds_difference(t, p, sensitive_features=groups))}


def _count(y_true, y_pred) -> int:
    return len(y_true)


def plot_gaps(result: dict[str, Any], path, verb: str = "probe bias") -> None:
    """Per-template mean gaps (sentence and rest) as horizontal bars, the overall means with their 95%
    intervals at the bottom."""
    from arlm.viz import pyplot, save_png

    plt = pyplot()
    per = result["per_template"]
    labels = [p["template"] if len(p["template"]) <= 48 else p["template"][:45] + "..." for p in per] + ["mean (95% CI)"]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(labels)), dpi=110)
    for k, (key, colour) in enumerate((("sentence_gap", "tab:blue"), ("rest_gap", "tab:orange"))):
        s = result["summary"][key]
        at = y + (k - 0.5) * 0.38
        ax.barh(at, [p[key] for p in per] + [s["mean"]], height=0.38, color=colour,
                label=f"{key.replace('_', ' ')}: log p(A) - log p(B)")
        ax.errorbar([s["mean"]], [at[-1]], xerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]],
                    fmt="none", ecolor="black", capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("nats (> 0: group A's term is the more likely)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    save_png(fig, path, verb)
