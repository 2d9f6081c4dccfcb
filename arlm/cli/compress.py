"""``arlm compress quantize|prune|distill``: smaller models that every verb loads, each command ending
with the original-vs-result table (arlm/compress/report.py)."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_verb, emit_json, options, verb_group
from arlm.config import CompressReportConfig, PruneConfig, QuantizeConfig


def _finish(args: argparse.Namespace, result: dict, what: str) -> int:
    if args.json:
        emit_json({k: v for k, v in result.items() if k != "table"})
        return 0
    print(f"{what} -> {result['out']}")
    print(result["table"])
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from arlm.compress.quantize import describe, quant_spec
    from arlm.compress.workflows import quantize_checkpoint

    cfg = options(QuantizeConfig, args, "quantize options")
    report = options(CompressReportConfig, args, "report options")
    result = quantize_checkpoint(cfg, report)
    spec = quant_spec(cfg.method, cfg.group_size, cfg.asymmetric)
    return _finish(args, result, f"quantized {result['layers']} layers and the embedding ({describe(spec)})")


def cmd_prune(args: argparse.Namespace) -> int:
    from arlm.compress.workflows import prune_checkpoint

    cfg = options(PruneConfig, args, "prune options")
    report = options(CompressReportConfig, args, "report options")
    result = prune_checkpoint(cfg, report)
    p = result["pruning"]
    return _finish(args, result, f"pruned ({cfg.method}, amount {cfg.amount}); the blocks' linear weights are now "
                                 f"{p['sparsity']:.1%} zeros")


def add_verbs(sub) -> None:
    verbs = verb_group(sub, "compress", "quantize, prune or distill a model into a smaller one every verb loads",
                       "Make a model smaller or faster and measure it against the original: weights file, "
                       "parameters, decoding tokens/s at batch 1 and 8, validation perplexity.")
    add_verb(verbs, "quantize", cmd_quantize, "weight-only int8 or int4, saved and loaded without re-quantizing",
             QuantizeConfig, CompressReportConfig,
             description="Quantize every linear layer and the token embedding of a float model (weight-only: int8 "
                         "with one scale per output channel, or int4 with a float16 scale per group of 32/64/128 "
                         "weights) and write a checkpoint that generate, eval, chat and serve load as it is. Norms, "
                         "biases and position embeddings stay float32. On CPU, int8 and int4 layers run arlm's own "
                         "kernels.")
    add_verb(verbs, "prune", cmd_prune, "zero weights (magnitude, Wanda) or remove heads / MLP units, then recover",
             PruneConfig, CompressReportConfig, skip=("baseline",),
             description="Prune the Transformer blocks of a float model: unstructured (magnitude, or Wanda's "
                         "|weight| x input norm from calibration batches) or structured (whole attention heads or MLP "
                         "units removed, so the matrices and the saved file shrink), optionally followed by "
                         "--recover-steps of fine-tuning through the training loop (pruned weights stay zero). --data "
                         "(a prepared folder) gives the calibration, recovery and validation text.")
