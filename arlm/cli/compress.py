"""``arlm compress quantize|prune|distill``: smaller models that every verb loads, each command ending
with the original-vs-result table (arlm/compress/report.py)."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_config_args, add_verb, emit_json, explicit_values, field_names, options, verb_group
from arlm.config import CompressReportConfig, DistillConfig, PruneConfig, QuantizeConfig, TrainConfig
from arlm.errors import UserError


def _finish(args: argparse.Namespace, result: dict, what: str) -> int:
    if args.json:
        emit_json({k: v for k, v in result.items() if k != "table"})
        return 0
    print(f"{what} -> {result['out']}")
    print(result["table"])
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from arlm.compress.quantize import describe, quant_spec
    from arlm.train.compress import quantize_checkpoint

    cfg = options(QuantizeConfig, args, "quantize options")
    report = options(CompressReportConfig, args, "report options")
    result = quantize_checkpoint(cfg, report)
    spec = quant_spec(cfg.method, cfg.group_size, cfg.asymmetric)
    return _finish(args, result, f"quantized {result['layers']} layers and the embedding ({describe(spec)})")


def cmd_prune(args: argparse.Namespace) -> int:
    from arlm.train.compress import prune_checkpoint

    cfg = options(PruneConfig, args, "prune options")
    report = options(CompressReportConfig, args, "report options")
    result = prune_checkpoint(cfg, report)
    p, rows = result["pruning"], result["rows"]
    if cfg.method in ("magnitude", "wanda"):
        what = f"the blocks' linear weights are now {p['sparsity']:.1%} zeros"
    else:
        what = f"parameters {rows[0]['params'] / 1e6:.2f}M -> {rows[-1]['params'] / 1e6:.2f}M"
    return _finish(args, result, f"pruned ({cfg.method}, amount {cfg.amount}); {what}")


def cmd_distill(args: argparse.Namespace) -> int:
    from arlm.train.compress import distill_checkpoint
    from arlm.config import from_dict
    from arlm.io.files import read_toml

    cfg = options(DistillConfig, args, "distill options")
    report = options(CompressReportConfig, args, "report options")
    config = read_toml(cfg.student_config) if cfg.student_config else {}
    if config:
        from_dict(TrainConfig, config, cfg.student_config)  # its keys' types, named by the file
        if any(k in config for k in ("teacher", "init_from", "resume")):
            raise UserError(f"{cfg.student_config}: teacher, init_from and resume are set by `arlm compress distill`; "
                            f"drop them from the file")
    result = distill_checkpoint(cfg, config, explicit_values(args, field_names(TrainConfig)), report)
    return _finish(args, result, f"distilled {cfg.teacher} into a {result['init']}-initialised student, "
                                 f"{result['steps']} steps (best checkpoint: {result['best']})")


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
    sp = add_verb(verbs, "distill", cmd_distill, "train a smaller student on a teacher's distributions (and the data)",
                  DistillConfig, CompressReportConfig, skip=("data",),
                  description="Knowledge distillation through the training loop: the student (by default the "
                              "teacher's shape with half the layers, started from every other teacher block as "
                              "DistilGPT2) minimises alpha T^2 KL(teacher || student) at temperature T plus (1 - alpha) "
                              "cross-entropy on --data. The training flags are `arlm train`'s; the output is a training "
                              "run. --baseline also trains the same student from scratch for the table.")
    add_config_args(sp, TrainConfig, skip=("teacher", "init_from", "resume", "keep_zeros", "replay_data",
                                           "replay_fraction", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
                                           "adapter_only", "preset", "val_fraction", "chat_template", "packing"))
