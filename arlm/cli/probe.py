"""``arlm probe bias|groups``: counterfactual log-probability gaps over templates, and a classifier's
metrics per group (fairlearn): probes of a model, not certificates (arlm/eval/fairness.py)."""

from __future__ import annotations

import argparse
import json

from arlm.cli.flags import add_verb, emit_json, load_model, load_options, options, verb_group
from arlm.config import BiasProbeConfig, GroupProbeConfig, LoadConfig
from arlm.errors import UserError


def read_probe(cfg: BiasProbeConfig) -> tuple[list[str], tuple[str, str], list[tuple[str, str]]]:
    """The templates, the two groups' names and the pairs of terms."""
    from arlm.io.files import read_text_file

    templates = [line.strip() for line in read_text_file(cfg.templates, what="templates file").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    rows = [line.split("\t") for line in read_text_file(cfg.pairs, what="pairs file").splitlines() if line.strip()]
    for n, row in enumerate(rows, 1):
        if len(row) != 2:
            raise UserError(f"{cfg.pairs} line {n}: expected two tab-separated terms, found {len(row)} field(s)")
    if len(rows) < 2:
        raise UserError(f"{cfg.pairs}: expected a header line naming the two groups, then at least one pair")
    return templates, (rows[0][0].strip(), rows[0][1].strip()), [(a.strip(), b.strip()) for a, b in rows[1:]]


def cmd_bias(args: argparse.Namespace) -> int:
    from arlm.eval.fairness import check_pairs, check_templates, counterfactual, plot_gaps
    from arlm.io.atomic import atomic_write_text
    from arlm.io.outputs import JSONL, PNG, Output, claim_file

    cfg = options(BiasProbeConfig, args, "probe options")
    templates, groups, pairs = read_probe(cfg)
    check_templates(templates, cfg.templates)
    check_pairs(pairs, cfg.pairs)
    inputs = [("templates file", cfg.templates), ("pairs file", cfg.pairs)]
    folders = [("model folder", load_options(args).model)]
    if cfg.plot:
        claim_file(cfg.plot, "--plot", Output(PNG, "probe bias"), inputs=inputs, input_folders=folders)
    if cfg.out:
        claim_file(cfg.out, "--out", Output(JSONL, "probe bias", keys=frozenset({"template", "a", "b", "sentence_gap",
                                                                                   "rest_gap"})),
                   inputs=inputs, input_folders=folders)
    m = load_model(args)
    result = counterfactual(lambda r: m.loglikelihood(r, cfg.batch_size), templates, pairs, cfg.seed)
    if cfg.out:
        atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result["rows"]))
    if cfg.plot:
        plot_gaps(result, cfg.plot)
    if args.json:
        emit_json({"model": m.info.path, "groups": list(groups), **{k: v for k, v in result.items() if k != "rows"}})
        return 0
    a, b = groups
    print(f"{result['templates']} templates x {result['pairs']} pairs ({a} / {b}); gap = log p({a}) - log p({b}), nats")
    print("| measure | mean gap | 95% CI (bootstrap) | pairs where " + a + " is more likely |")
    print("|---|---|---|---|")
    for key, name in (("sentence_gap", "whole sentence"), ("rest_gap", "text after the term")):
        s = result["summary"][key]
        print(f"| {name} | {s['mean']:+.3f} | [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}] | {100 * s['a_more_likely']:.1f}% |")
    for p in result["per_template"]:
        print(f"  {p['sentence_gap']:+7.3f} {p['rest_gap']:+7.3f}  {p['template']}")
    for what, path in (("plot", cfg.plot), ("pairs", cfg.out)):
        if path:
            print(f"{what}: {path}")
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    from arlm.data.tasks import labels_of, read_example
    from arlm.eval.fairness import group_metrics
    from arlm.io.files import read_jsonl
    from arlm.interop.load import model_head

    cfg = options(GroupProbeConfig, args, "probe options")
    head = model_head(load_options(args).model)
    if head is None or head.task != "classify":
        raise UserError(f"{load_options(args).model} has no text-classification head; per-group metrics are those of "
                        f"a classifier (fine-tune one with `arlm finetune --task classify`)")
    examples, groups = [], []
    for n, rec in read_jsonl(cfg.task):
        where = f"{cfg.task} line {n}"
        examples.append(read_example("classify", rec, where))
        g = rec.get(cfg.group_field)
        if isinstance(g, bool) or not isinstance(g, (str, int)) or g == "":
            raise UserError(f"{where}: expected the group under {cfg.group_field!r} (--group-field names the key)")
        groups.append(str(g))
    if not examples:
        raise UserError(f"{cfg.task} holds no examples")
    labels_of("classify", examples, head.labels, cfg.task)
    if cfg.positive not in head.labels:
        raise UserError(f"--positive {cfg.positive!r} is not one of the classifier's labels: {', '.join(head.labels)}")
    m = load_model(args)
    _, records = m.evaluate_head(examples, cfg.batch_size)
    result = group_metrics([r["reference"] for r in records], [r["prediction"] for r in records], groups, cfg.positive)
    if args.json:
        emit_json({"model": m.info.path, "task": cfg.task, **result})
        return 0
    print(f"{cfg.task}: {len(examples):,} texts; selected = predicted {cfg.positive!r}")
    print("| group | texts | accuracy | selection rate |")
    print("|---|---|---|---|")
    for g, row in result["by_group"].items():
        print(f"| {g} | {int(row['count']):,} | {100 * row['accuracy']:.2f} | {100 * row['selection_rate']:.2f} |")
    o = result["overall"]
    print(f"| all | {int(o['count']):,} | {100 * o['accuracy']:.2f} | {100 * o['selection_rate']:.2f} |")
    print(f"demographic-parity difference {result['demographic_parity_difference']:.4f} | "
          f"equalized-odds difference {result['equalized_odds_difference']:.4f}")
    return 0


def add_verbs(sub) -> None:
    verbs = verb_group(sub, "probe", "bias and fairness probes of a model (counterfactual pairs, per-group metrics)",
                       "Probe a model for bias: log-probability gaps between group terms in templates, or a "
                       "classifier's accuracy and selection rate per group (fairlearn). Probes of these models on "
                       "these inputs, not certificates.")
    add_verb(verbs, "bias", cmd_bias, "log p(A) - log p(B) over templates filled with pairs of group terms",
             LoadConfig, BiasProbeConfig,
             description="Fill each template with each pair of group terms (he/she, king/queen, ...) and report the "
                         "log-probability gap of the whole sentence and of the text after the term, with a 95% "
                         "bootstrap interval of the mean, per template and overall.".replace("%", "%%"))
    add_verb(verbs, "groups", cmd_groups, "a classifier's accuracy and selection rate per group (fairlearn MetricFrame)",
             LoadConfig, GroupProbeConfig,
             description="Score a text-classification head on labelled JSONL whose records carry a group, and report "
                         "per-group accuracy and selection rate with the demographic-parity and equalized-odds "
                         "differences (fairlearn).")
